"""The streaming step as an ONNX graph: one hop of audio and the state in, one hop and the new state out.

    audio (M, hop) float32, state.<path> …  ->  enhanced (hop,), next_state.<path> …

The state tensors are named after the layers that declare them (``speechnorm.state``), e.g.
``state.rnn.layers.0.body.layers.1.mean`` is the Online Norm mean of the first GRU block. The
batch is one stream (a server runs one graph call per stream and hop). The mic count M is a
dynamic axis: the per-mic states (``SpectralEnhancer.PER_MIC``) have their stream axis named
``mics``. ``StateTensor`` records, for every state tensor, its name, shape and initial value for
one mic, its mic axis and meaning; the state for M mics repeats that value M times along the mic
axis. Files exported before the states had names (``state_0`` …) still load.

The *batched* step graph (``model_batch.onnx``, ``export_batch_step``) runs any number of streams
of the same mic count in one call, every tensor batch-first:

    audio (S, M, hop), state.<path> (S, *one stream's shape) …  ->  enhanced (S, hop), next_state.<path> (S, …) …

so a stream's state in it is exactly its state in the one-stream graph, with a leading stream axis
(``streams``): a server gathers ready streams' states with one indexing per tensor, and an
engine that keeps state per sequence (e.g. Triton's sequence batcher) batches along axis 0.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from ..graph_io import AUDIO, ENHANCED, MIC_AXIS_NAME, STREAM_AXIS_NAME, StateTensor, next_name
from ..models import SpectralEnhancer
from ..models.base import FlatStep

OPSET = 17


def state_tensors(model: SpectralEnhancer) -> list[StateTensor]:
    """The graph's state tensors, from the layers' declarations: names, one-mic shapes, mic axes."""
    tensors = []
    for path, (spec, per_mic) in model.state_layout().items():
        initial = spec.make(1).detach().float().numpy().copy()
        tensors.append(StateTensor(f"state.{path}", tuple(initial.shape), spec.stream_axis if per_mic else None, initial,
                                   spec.doc + (" — one per mic" if per_mic else "")))
    return tensors


def export_step(model: SpectralEnhancer, specs: list[StateTensor], example_mics: int = 2, opset: int = OPSET) -> bytes:
    """The step graph as ONNX bytes (TorchScript exporter: it keeps the mic axis dynamic through the GRUs)."""
    module = FlatStep(model, [spec.path for spec in specs], single=True).eval()
    example = (torch.zeros(example_mics, model.hop),
               *(torch.from_numpy(spec.initial_for(example_mics)) for spec in specs))
    dynamic = {AUDIO: {0: MIC_AXIS_NAME}}
    for spec in specs:
        if spec.mic_axis is not None:
            dynamic[spec.name] = dynamic[next_name(spec.name)] = {spec.mic_axis: MIC_AXIS_NAME}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints: the sizes are checked by verification
        torch.onnx.export(
            module, example, buffer, input_names=[AUDIO, *(s.name for s in specs)],
            output_names=[ENHANCED, *(next_name(s.name) for s in specs)],
            dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    return buffer.getvalue()


class BatchFirstStep(nn.Module):
    """``model.step`` with every tensor batch-first (see the module docstring). In the model's own
    state a tensor's streams sit on its declared stream axis, B·M of them for a per-mic tensor (mic
    fastest) and B otherwise; batch-first it is (B, *one stream's shape), the stream axis holding
    M (per mic) or 1. Moving the batch axis next to it and merging the two converts exactly."""

    def __init__(self, model: SpectralEnhancer, specs: list[StateTensor]):
        super().__init__()
        layout = model.state_layout()
        self.step = FlatStep(model, [spec.path for spec in specs])
        self.axes = [layout[spec.path][0].stream_axis for spec in specs]

    def forward(self, audio: Tensor, *state: Tensor):
        streams = audio.shape[0]
        inner = [s.movedim(0, axis).flatten(axis, axis + 1) for s, axis in zip(state, self.axes)]
        out, *new_state = self.step(audio, *inner)
        return (out, *(n.unflatten(axis, (streams, -1)).movedim(axis, 0) for n, axis in zip(new_state, self.axes)))


def export_batch_step(model: SpectralEnhancer, specs: list[StateTensor], example_streams: int = 2,
                      example_mics: int = 2, opset: int = OPSET) -> bytes:
    """The batched step graph as ONNX bytes: streams and mics both dynamic axes."""
    module = BatchFirstStep(model, specs).eval()
    example = (torch.zeros(example_streams, example_mics, model.hop),
               *(torch.from_numpy(np.stack([spec.initial_for(example_mics)] * example_streams)) for spec in specs))
    dynamic = {AUDIO: {0: STREAM_AXIS_NAME, 1: MIC_AXIS_NAME}, ENHANCED: {0: STREAM_AXIS_NAME}}
    for spec in specs:
        axes = {0: STREAM_AXIS_NAME}
        if spec.mic_axis is not None:
            axes[1 + spec.mic_axis] = MIC_AXIS_NAME
        dynamic[spec.name] = dynamic[next_name(spec.name)] = axes
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, buffer, input_names=[AUDIO, *(s.name for s in specs)],
            output_names=[ENHANCED, *(next_name(s.name) for s in specs)],
            dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    return buffer.getvalue()
