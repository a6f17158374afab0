"""The streaming step as an ONNX graph: one hop of audio and the state in, one hop and the new state out.

    audio (M, hop) float32, state_0 … state_{S-1}  ->  enhanced (hop,), next_state_0 … next_state_{S-1}

The batch is one stream (a server runs one graph call per stream and hop). The mic count M is a
dynamic axis: every state tensor whose size depends on M has that axis named ``mics``.
``StateSpec`` records, for every state tensor, its shape for one mic, its mic axis and its
initial value for one mic; the state for M mics repeats that value M times along the mic axis
(checked against ``model.initial_state`` when the specs are made).
"""

from __future__ import annotations

import base64
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..models import SpectralEnhancer

AUDIO, ENHANCED = "audio", "enhanced"
MIC_AXIS_NAME = "mics"
OPSET = 17


def state_name(index: int) -> str:
    return f"state_{index}"


def next_state_name(index: int) -> str:
    return f"next_state_{index}"


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of the step graph."""

    name: str
    shape: tuple[int, ...]  # for one mic
    mic_axis: int | None  # the axis whose size is the mic count, or None
    initial: np.ndarray  # the initial value for one mic, float32, ``shape``

    def initial_for(self, mics: int) -> np.ndarray:
        if self.mic_axis is None:
            return self.initial.copy()
        return np.repeat(self.initial, mics, axis=self.mic_axis)

    def shape_for(self, mics: int) -> tuple[int, ...]:
        return tuple(mics if axis == self.mic_axis else size for axis, size in enumerate(self.shape))

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "mic_axis": self.mic_axis,
                "initial_float32_base64": base64.b64encode(self.initial.astype("<f4").tobytes()).decode()}

    @classmethod
    def from_json(cls, data: dict) -> "StateSpec":
        shape = tuple(int(s) for s in data["shape"])
        initial = np.frombuffer(base64.b64decode(data["initial_float32_base64"]), dtype="<f4").reshape(shape)
        return cls(data["name"], shape, data["mic_axis"], initial.astype(np.float32))


def state_specs(model: SpectralEnhancer) -> list[StateSpec]:
    """Find each state tensor's mic axis by comparing the states for 1 and 3 mics."""
    one, three = model.initial_state(1, mics=1), model.initial_state(1, mics=3)
    specs = []
    for index, (a, b) in enumerate(zip(one, three)):
        differing = [axis for axis in range(a.dim()) if a.shape[axis] != b.shape[axis]]
        if len(differing) > 1 or (differing and (a.shape[differing[0]], b.shape[differing[0]]) != (1, 3)):
            raise ValueError(f"state {index} grows with the mic count in an unsupported way: {tuple(a.shape)} for 1 mic, "
                             f"{tuple(b.shape)} for 3")
        spec = StateSpec(state_name(index), tuple(a.shape), differing[0] if differing else None,
                         a.detach().float().numpy().copy())
        if not np.array_equal(spec.initial_for(3), b.detach().float().numpy()):
            raise ValueError(f"state {index}: the initial state for 3 mics is not the 1-mic state repeated per mic")
        specs.append(spec)
    return specs


class StepModule(torch.nn.Module):
    """``model.step`` for one stream with flat inputs and outputs: (M, hop), *state -> (hop,), *state."""

    def __init__(self, model: SpectralEnhancer):
        super().__init__()
        self.model = model

    def forward(self, audio: Tensor, *state: Tensor):
        out, new_state = self.model.step(audio.unsqueeze(0), tuple(state))
        return (out[0], *new_state)


def export_step(model: SpectralEnhancer, specs: list[StateSpec], example_mics: int = 2, opset: int = OPSET) -> bytes:
    """The step graph as ONNX bytes (TorchScript exporter: it keeps the mic axis dynamic through the GRUs)."""
    module = StepModule(model).eval()
    example = (torch.zeros(example_mics, model.hop),
               *(torch.from_numpy(spec.initial_for(example_mics)) for spec in specs))
    dynamic = {AUDIO: {0: MIC_AXIS_NAME}}
    for index, spec in enumerate(specs):
        if spec.mic_axis is not None:
            dynamic[state_name(index)] = dynamic[next_state_name(index)] = {spec.mic_axis: MIC_AXIS_NAME}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints: the sizes are checked by verification
        torch.onnx.export(
            module, example, buffer, input_names=[AUDIO, *(s.name for s in specs)],
            output_names=[ENHANCED, *(next_state_name(i) for i in range(len(specs)))],
            dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True,
        )
    return buffer.getvalue()
