"""The exported step graph's interface, as a runtime needs it (numpy only, no torch).

    audio (M, hop) float32, state.<path> …  ->  enhanced (hop,), next_state.<path> …

``StateTensor`` is one state tensor as the graph's metadata describes it (name, one-mic shape and
initial value, mic axis, meaning); ``speechnorm.export`` writes these, ``speechnorm.stream`` reads them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

AUDIO, ENHANCED = "audio", "enhanced"
SPEAKER = "speaker"  # the offline graph's embedding input, for a personalized model
MIC_AXIS_NAME = "mics"
STREAM_AXIS_NAME = "streams"  # the batched step graph's leading axis: one row per stream


def wants_speaker(owner: str, speaker_dim: int, speaker) -> bool:
    """Whether ``speaker`` is there to check: raises when a personalized model (``speaker_dim`` > 0)
    has none, or a plain one is given one. Shared by the models and the runtimes."""
    if not speaker_dim:
        if speaker is not None:
            raise ValueError(f"{owner} is not personalized: it takes no speaker embedding")
        return False
    if speaker is None:
        raise ValueError(f"{owner} is personalized: give the target speaker's embedding ({speaker_dim} values; "
                         "`speechnorm enroll ME.wav -o me.npy`)")
    return True


def next_name(name: str) -> str:
    """The output that carries state ``name`` to the next hop: ``state.x`` -> ``next_state.x``
    (and ``state_3`` -> ``next_state_3`` in files exported before the states had names)."""
    return "next_" + name


@dataclass(frozen=True)
class StateTensor:
    """One state tensor of the step graph."""

    name: str
    shape: tuple[int, ...]  # for one mic
    mic_axis: int | None  # the axis whose size is the mic count, or None
    initial: np.ndarray  # the initial value for one mic, float32, ``shape``
    doc: str = ""

    @property
    def path(self) -> str:
        """The module path and entry in the model's state (``rnn.layers.0.body.layers.1.mean``)."""
        return self.name.removeprefix("state.")

    def initial_for(self, mics: int) -> np.ndarray:
        if self.mic_axis is None:
            return self.initial.copy()
        return np.repeat(self.initial, mics, axis=self.mic_axis)

    def shape_for(self, mics: int) -> tuple[int, ...]:
        return tuple(mics if axis == self.mic_axis else size for axis, size in enumerate(self.shape))

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "mic_axis": self.mic_axis, "doc": self.doc,
                "initial_float32_base64": base64.b64encode(self.initial.astype("<f4").tobytes()).decode()}

    @classmethod
    def from_json(cls, data: dict) -> "StateTensor":
        shape = tuple(int(s) for s in data["shape"])
        initial = np.frombuffer(base64.b64decode(data["initial_float32_base64"]), dtype="<f4").reshape(shape)
        return cls(data["name"], shape, data["mic_axis"], initial.astype(np.float32), data.get("doc", ""))
