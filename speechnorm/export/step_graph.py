"""The streaming step as an ONNX graph: one hop of audio and the state in, one hop and the new state out.

    audio (M, hop) float32, state.<path> …  ->  enhanced (hop,), next_state.<path> …

The state tensors are named after the layers that declare them (``speechnorm.state``), e.g.
``state.rnn.layers.0.body.layers.1.mean`` is the Online Norm mean of the first GRU block. The
batch is one stream (a server runs one graph call per stream and hop). The mic count M is a
dynamic axis: the per-mic states (``SpectralEnhancer.PER_MIC``) have their stream axis named
``mics``. ``StateTensor`` records, for every state tensor, its name, shape and initial value for
one mic, its mic axis and meaning; the state for M mics repeats that value M times along the mic
axis. Files exported before the states had names (``state_0`` …) still load.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from ..graph_io import AUDIO, ENHANCED, MIC_AXIS_NAME, StateTensor, next_name
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
