"""Two ways to run a model's streaming step, behind one interface.

A *model* (``OnnxModel`` or ``TorchModel``) is loaded once and shared; ``model.open(mics)`` gives
a ``Stream``: one stream's state, advanced by ``stream.step(hop_audio)`` with hop_audio
(M, hop) float32 -> (hop,) float32. ``model.offline(audio)`` runs a whole utterance (M, N).
A personalized model (``model.speaker_dim`` > 0) needs the target speaker's embedding:
``model.open(mics, speaker=e)``, ``model.offline(audio, speaker=e)``; the stream keeps it (it is
a state tensor of the step graph, ``state.speaker.embedding``, that never changes).

The onnxruntime stream binds preallocated buffers once (IO binding) and alternates two state
sets (ping-pong), so a hop allocates nothing on the Python side.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..graph_io import AUDIO, ENHANCED, SPEAKER, StateTensor, next_name, wants_speaker

METADATA_KEY = "speechnorm"
STEP_FILE, OFFLINE_FILE, BATCH_FILE = "model.onnx", "model_offline.onnx", "model_batch.onnx"
DEFAULT_MAX_MICS = 16


class ModelInfo:
    """What a stream needs to know of a model: rate, hop, delay, mic range."""

    sample_rate: int
    hop: int
    delay_samples: int
    latency_ms: float
    min_mics: int = 1
    max_mics: int = DEFAULT_MAX_MICS
    name: str = "model"
    speaker_dim: int = 0  # > 0: personalized, takes a speaker embedding of this size

    def check_mics(self, mics: int) -> None:
        if not isinstance(mics, (int, np.integer)) or not self.min_mics <= mics <= self.max_mics:
            raise ValueError(f"{self.name} takes {self.min_mics} to {self.max_mics} microphones, got {mics}")

    def check_speaker(self, speaker) -> np.ndarray | None:
        """The speaker embedding as (D,) float32, None for a plain model, or a ValueError saying why not."""
        if not wants_speaker(self.name, self.speaker_dim, speaker):
            return None
        try:
            speaker = np.asarray(speaker, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"the speaker embedding must be {self.speaker_dim} numbers, got {type(speaker).__name__}") from None
        if speaker.ndim == 2 and speaker.shape[0] == 1:  # one row, as (1, D)
            speaker = speaker[0]
        if speaker.shape != (self.speaker_dim,):
            raise ValueError(f"{self.name} takes a speaker embedding of {self.speaker_dim} values, got shape "
                             f"{np.shape(speaker)}")
        if not np.isfinite(speaker).all():
            raise ValueError("the speaker embedding contains NaN or inf")
        return np.ascontiguousarray(speaker, dtype=np.float32)


# ---------------------------------------------------------------------------- onnxruntime
def session_options(threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxModel(ModelInfo):
    """An exported step graph (``model.onnx``), its card read from the file's metadata."""

    def __init__(self, path: str | Path, threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        self.path = path
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ValueError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0][:200]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ValueError(f"{path}: not a speechnorm step graph (no '{METADATA_KEY}' metadata); export it with `speechnorm export`")
        meta = json.loads(raw)
        self.card = meta
        self.name = meta.get("name", path.parent.name)
        self.sample_rate, self.hop = int(meta["sample_rate"]), int(meta["hop_samples"])
        self.delay_samples, self.latency_ms = int(meta["delay_samples"]), float(meta["latency_ms"])
        self.min_mics, self.max_mics = int(meta["mics"]["min"]), int(meta["mics"]["max"])
        self.states = [StateTensor.from_json(s) for s in meta["states"]]
        speaker = meta.get("speaker")  # personalized: which state holds the embedding
        self.speaker_dim = int(speaker["dim"]) if speaker else 0
        self.speaker_index = [s.name for s in self.states].index(speaker["state"]) if speaker else None
        self.threads = threads
        self._offline = None
        self._batch = None

    @property
    def batch_session(self):
        """The batched step graph beside the step graph (``model_batch.onnx``: many streams of one mic
        count per call, ``speechnorm.stream.batch``), or None when the export has none."""
        if self._batch is None:
            import onnxruntime as ort

            batch_path = self.path.with_name(BATCH_FILE)
            if not batch_path.is_file():
                return None
            self._batch = ort.InferenceSession(str(batch_path), session_options(self.threads),
                                               providers=["CPUExecutionProvider"])
        return self._batch

    def open(self, mics: int, speaker=None) -> "OnnxStream":
        self.check_mics(mics)
        return OnnxStream(self, mics, self.check_speaker(speaker))

    def initial_states(self, mics: int, speaker: np.ndarray | None = None) -> list[np.ndarray]:
        """Every state's initial value for one stream of ``mics`` mics (``speaker``: checked, or None)."""
        initial = [spec.initial_for(mics) for spec in self.states]
        if speaker is not None:  # the state's shape: (1, D)
            initial[self.speaker_index] = speaker.reshape(initial[self.speaker_index].shape).copy()
        return initial

    def offline(self, audio: np.ndarray, speaker=None) -> np.ndarray:
        """(M, N) with N a multiple of the hop -> (N,), through ``model_offline.onnx`` beside the step graph."""
        speaker = self.check_speaker(speaker)
        if self._offline is None:
            import onnxruntime as ort

            offline_path = self.path.with_name(OFFLINE_FILE)
            if not offline_path.is_file():
                raise FileNotFoundError(f"no offline graph {offline_path} beside {self.path}; re-export the model")
            self._offline = ort.InferenceSession(str(offline_path), session_options(self.threads),
                                                 providers=["CPUExecutionProvider"])
        self.check_mics(audio.shape[0])
        if audio.shape[1] == 0 or audio.shape[1] % self.hop:
            raise ValueError(f"the offline graph needs a positive multiple of the hop ({self.hop}) samples, "
                             f"got {audio.shape[1]}; pad the end with zeros")
        feeds = {AUDIO: np.ascontiguousarray(audio, dtype=np.float32)}
        if speaker is not None:
            feeds[SPEAKER] = speaker[None]  # (1, D), as the step graph's state
        return self._offline.run(None, feeds)[0]


class OnnxStream:
    """One stream through a shared onnxruntime session, with preallocated, bound buffers."""

    def __init__(self, model: OnnxModel, mics: int, speaker: np.ndarray | None = None):
        self.model, self.mics = model, mics
        self.audio = np.zeros((mics, model.hop), np.float32)
        self.enhanced = np.zeros(model.hop, np.float32)
        self._initial = model.initial_states(mics, speaker)  # a reset keeps the speaker
        self._states = [[s.copy() for s in self._initial] for _ in range(2)]
        self._bindings = [self._bind(self._states[k], self._states[1 - k]) for k in range(2)]
        self._current = 0

    def _bind(self, inputs: list[np.ndarray], outputs: list[np.ndarray]):
        binding = self.model.session.io_binding()

        def bind(method, name, array):
            method(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)

        bind(binding.bind_input, AUDIO, self.audio)
        bind(binding.bind_output, ENHANCED, self.enhanced)
        for spec, state_in, state_out in zip(self.model.states, inputs, outputs):
            bind(binding.bind_input, spec.name, state_in)
            bind(binding.bind_output, next_name(spec.name), state_out)
        return binding

    def step(self, hop_audio: np.ndarray) -> np.ndarray:
        """(M, hop) -> (hop,): a view of this stream's output buffer, valid until the next step."""
        self.audio[...] = hop_audio
        self.model.session.run_with_iobinding(self._bindings[self._current])
        self._current = 1 - self._current
        return self.enhanced

    def reset(self) -> None:
        for state, initial in zip(self._states[self._current], self._initial):
            state[...] = initial


# ---------------------------------------------------------------------------- torch
class TorchModel(ModelInfo):
    """A trained model from a checkpoint (``.ckpt`` or a folder holding ``model.ckpt``)."""

    def __init__(self, path: str | Path, threads: int | None = None, max_mics: int = DEFAULT_MAX_MICS):
        from ..models.checkpoint import load_model, resolve_checkpoint

        self.module, self.hparams = load_model(path)
        self.path = resolve_checkpoint(path)
        self.name = self.path.parent.name if self.path.name == "model.ckpt" else self.path.stem
        self.sample_rate, self.hop = self.module.sample_rate, self.module.hop
        self.delay_samples, self.latency_ms = self.module.delay_samples, self.module.latency_ms
        self.max_mics = max_mics
        self.speaker_dim = self.module.speaker_dim
        if threads is not None:
            import torch

            torch.set_num_threads(threads)

    def open(self, mics: int, speaker=None) -> "TorchStream":
        self.check_mics(mics)
        return TorchStream(self, mics, self.check_speaker(speaker))

    def offline(self, audio: np.ndarray, speaker=None) -> np.ndarray:
        import torch

        self.check_mics(audio.shape[0])
        speaker = self.check_speaker(speaker)
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None],
                               speaker=None if speaker is None else torch.from_numpy(speaker))[0].numpy()


class TorchStream:
    def __init__(self, model: TorchModel, mics: int, speaker: np.ndarray | None = None):
        import torch

        self.model, self.mics = model, mics
        self.speaker = None if speaker is None else torch.from_numpy(speaker)
        self.reset()

    def step(self, hop_audio: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out, self.state = self.model.module.step(torch.from_numpy(hop_audio)[None], self.state)
        return out[0].numpy()

    def reset(self) -> None:
        self.state = self.model.module.initial_state(1, mics=self.mics, speaker=self.speaker)


def load(path: str | Path, backend: str = "auto", threads: int = 1) -> OnnxModel | TorchModel:
    """A model from a released folder (``model.onnx`` and/or ``model.ckpt``), a ``.onnx`` or a ``.ckpt``.

    ``backend``: ``"onnx"``, ``"torch"`` or ``"auto"`` (ONNX when the folder has an exported graph).
    """
    path = Path(path)
    if backend not in ("auto", "onnx", "torch"):
        raise ValueError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    if path.is_dir():
        onnx_file, ckpt_file = path / STEP_FILE, path / "model.ckpt"
        if backend in ("auto", "onnx") and onnx_file.is_file():
            return OnnxModel(onnx_file, threads)
        if backend in ("auto", "torch") and ckpt_file.is_file():
            return TorchModel(ckpt_file, threads)
        wanted = {"auto": f"{STEP_FILE} or model.ckpt", "onnx": STEP_FILE, "torch": "model.ckpt"}[backend]
        raise FileNotFoundError(f"{path} holds no {wanted}")
    if path.suffix == ".onnx":
        if backend == "torch":
            raise ValueError(f"{path} is an ONNX file; the torch backend needs a .ckpt")
        return OnnxModel(path, threads)
    if backend == "onnx":
        raise ValueError(f"{path} is not an ONNX file; export it with `speechnorm export {path} -o DIR`")
    return TorchModel(path, threads)
