"""``speechnorm export CKPT -o DIR``: the streaming step and offline graphs, verified, with their card.

Writes into DIR:
- ``model.onnx``: the step graph (``step_graph.py``); its metadata (key ``speechnorm``) holds the
  card below plus every state's initial value, so the file alone is enough to stream;
- ``model_offline.onnx``: the whole-utterance graph (``offline_graph.py``);
- ``model_batch.onnx``: the batched step graph, many streams per call, every tensor batch-first
  (``step_graph.export_batch_step``), as ``speechnorm serve`` batches streams;
- ``card.json``: the fields of an existing card, plus an ``onnx`` section.

Before anything is written, real recorded speech (``speechnorm/assets/real_speech``) is made
multi-channel and streamed hop by hop through onnxruntime (the serving path,
``speechnorm.stream``) and through PyTorch's ``step``, for 1, 4 and ``max_mics`` microphones, and
the offline graph is run against ``model(audio)``; three streams of different audio go through the
batched graph together, each against its own one-stream run. Above ``tolerance`` nothing is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from ..assets import REAL_SPEECH
from ..graph_io import AUDIO, ENHANCED, MIC_AXIS_NAME, SPEAKER, STREAM_AXIS_NAME, StateTensor, next_name
from ..models import SpectralEnhancer, count_parameters
from ..models.checkpoint import load_model, resolve_checkpoint
from ..stream.backends import OnnxModel
from ..stream.batch import StatePool
from .card import read_card, write_card
from .offline_graph import build_offline
from .step_graph import OPSET, export_batch_step, export_step, state_tensors

TOLERANCE = 1e-4
VERIFY_SECONDS = 4.0


class ExportError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes; nothing was written."""


def verification_audio(mics: int, sample_rate: int, seconds: float = VERIFY_SECONDS) -> np.ndarray:
    """Real speech as an M-mic signal: each mic a differently delayed copy plus a little noise (seeded)."""
    from ..data.audio_io import read_audio

    speech = read_audio(REAL_SPEECH, sample_rate)[0][0].numpy()
    length = int(seconds * sample_rate)
    start = int(6.5 * sample_rate)  # inside the conversation, past the opening silence
    rng = np.random.default_rng(mics)
    channels = []
    for mic in range(mics):
        delay = int(rng.integers(0, 8)) if mic else 0
        clip = speech[start - delay : start - delay + length]
        channels.append(clip + 0.01 * rng.standard_normal(length).astype(np.float32))
    return np.stack(channels).astype(np.float32)


def verification_speakers(model: SpectralEnhancer, count: int) -> list[np.ndarray | None]:
    """Speaker embeddings to verify a personalized model with (unit, non-negative like the encoder's,
    seeded; one per stream), or Nones for a plain model."""
    if not model.personalized:
        return [None] * count
    rng = np.random.default_rng(17)
    raw = np.abs(rng.standard_normal((count, model.speaker_dim))).astype(np.float32)
    return list(raw / np.linalg.norm(raw, axis=1, keepdims=True))


def card_section(model: SpectralEnhancer, specs: list[StateTensor], max_mics: int, opset: int) -> dict:
    section = _card_section(model, specs, max_mics, opset)
    if model.personalized:
        state = f"state.{model.SPEAKER_STATE}"
        section["speaker"] = {
            "dim": model.speaker_dim, "state": state,
            "encoder": "GE2E speaker encoder, the weights of the resemblyzer 0.1.4 wheel (speechnorm.speaker): "
                       "`speechnorm enroll ME.wav -o me.npy` writes it",
            "step_graph": f"set input {state} (1, {model.speaker_dim}) to the embedding when a stream opens; "
                          "the graph passes it through unchanged",
            "offline_graph": f"input '{SPEAKER}' (1, {model.speaker_dim}) float32",
        }
        section["offline_graph"]["inputs"][SPEAKER] = [1, model.speaker_dim]
    return section


def _card_section(model: SpectralEnhancer, specs: list[StateTensor], max_mics: int, opset: int) -> dict:
    return {
        "sample_rate": model.sample_rate,
        "hop_samples": model.hop,
        "window_samples": model.stft.n_fft,
        "delay_samples": model.delay_samples,
        "latency_ms": model.latency_ms,
        "mics": {"min": 1, "max": max_mics, "axis_name": MIC_AXIS_NAME, "reference": 0},
        "opset": opset,
        "step_graph": {
            "file": "model.onnx",
            "inputs": {AUDIO: [MIC_AXIS_NAME, model.hop], **{s.name: _symbolic(s) for s in specs}},
            "outputs": {ENHANCED: [model.hop], **{next_name(s.name): _symbolic(s) for s in specs}},
            "initial_state": "in the file's metadata (key 'speechnorm', field 'states'): each state's value for one "
                             "mic, float32 base64, repeated mics times along mic_axis",
            "states": {s.name: {"shape": _symbolic(s), "meaning": s.doc} for s in specs},
        },
        "batch_graph": {
            "file": "model_batch.onnx",
            "inputs": {AUDIO: [STREAM_AXIS_NAME, MIC_AXIS_NAME, model.hop],
                       **{s.name: [STREAM_AXIS_NAME, *_symbolic(s)] for s in specs}},
            "outputs": {ENHANCED: [STREAM_AXIS_NAME, model.hop],
                        **{next_name(s.name): [STREAM_AXIS_NAME, *_symbolic(s)] for s in specs}},
            "streams": "any number of streams of one mic count; row i of every tensor is stream i, exactly its "
                       "state in the step graph",
        },
        "offline_graph": {"file": "model_offline.onnx", "inputs": {AUDIO: [MIC_AXIS_NAME, "samples"]},
                          "outputs": {ENHANCED: ["samples"]}, "samples": f"a multiple of {model.hop}"},
    }


def _symbolic(spec: StateTensor) -> list:
    return [MIC_AXIS_NAME if axis == spec.mic_axis else size for axis, size in enumerate(spec.shape)]


@torch.inference_mode()
def verify(model: SpectralEnhancer, step_path: Path, mic_counts: list[int]) -> dict:
    """Max |ONNX - PyTorch| over real speech, hop by hop and offline, per mic count."""
    onnx_model = OnnxModel(step_path)
    result = {}
    (speaker,) = verification_speakers(model, 1)
    for mics in mic_counts:
        audio = verification_audio(mics, model.sample_rate)
        onnx_stream = onnx_model.open(mics, speaker=speaker)
        state = model.initial_state(1, mics=mics, speaker=None if speaker is None else torch.from_numpy(speaker))
        streamed, step_diff = [], 0.0
        for start in range(0, audio.shape[1] - model.hop + 1, model.hop):
            hop = audio[:, start : start + model.hop]
            expected, state = model.step(torch.from_numpy(hop)[None], state)
            streamed.append(expected[0].numpy())
            step_diff = max(step_diff, float(np.abs(onnx_stream.step(hop) - streamed[-1]).max()))
        # The offline graph scans the step, so PyTorch's step scan is its truth (PyTorch's own
        # forward == step scan is the models' contract, tested in tests/property).
        offline = onnx_model.offline(audio[:, : len(streamed) * model.hop], speaker=speaker)
        offline_diff = float(np.abs(offline - np.concatenate(streamed)).max())
        result[str(mics)] = {"step": step_diff, "offline": offline_diff}
    return result


def verify_batch(onnx_model, mics: int, streams: int = 3, hops: int = 100, speakers: list | None = None) -> float:
    """Max |batched - one-stream| when ``streams`` streams of different audio (and, personalized,
    different speakers) share every call."""

    speakers = speakers or [None] * streams
    pool = StatePool(onnx_model, mics)
    slots = [pool.acquire(speaker) for speaker in speakers]
    audio = [verification_audio(mics, onnx_model.sample_rate) * gain for gain in (1.0, 0.1, 2.0)[:streams]]
    alone = [onnx_model.open(mics, speaker=speaker) for speaker in speakers]
    worst = 0.0
    for hop in range(hops):
        piece = [a[:, hop * onnx_model.hop : (hop + 1) * onnx_model.hop] for a in audio]
        together = pool.run(slots, np.stack(piece))
        for stream, one, row in zip(alone, piece, together):
            worst = max(worst, float(np.abs(stream.step(one) - row).max()))
    return worst


def export_model(checkpoint: str | Path, out_dir: str | Path, max_mics: int = 16, opset: int = OPSET,
                 tolerance: float = TOLERANCE) -> dict:
    """Export a checkpoint, verify, then write; returns the card. Raises ExportError (nothing written) on a mismatch."""
    model, hparams = load_model(checkpoint)
    out_dir = Path(out_dir)
    card = read_card(out_dir)
    card.setdefault("model", {k: hparams.get(k) for k in ("model", "norm", "size", "model_config")})
    data = hparams.pop("data", {})
    if data:  # what `speechnorm evaluate` needs to rebuild the recipe's test data for the ONNX file
        card.setdefault("training", {}).setdefault("data", data)
    card["checkpoint"] = resolve_checkpoint(checkpoint).name
    return export_module(model, out_dir, card, max_mics=max_mics, opset=opset, tolerance=tolerance)


def export_module(model: SpectralEnhancer, out_dir: str | Path, card: dict | None = None, max_mics: int = 16,
                  opset: int = OPSET, tolerance: float = TOLERANCE) -> dict:
    """Export a model instance (eval mode) into ``out_dir``; ``card`` holds the fields to keep beside ``onnx``."""
    if not 1 <= max_mics <= 64:
        raise ValueError(f"max_mics must lie in [1, 64], got {max_mics}")
    model = model.eval()
    specs = state_tensors(model)
    step_bytes = export_step(model, specs, opset=opset)
    batch_bytes = export_batch_step(model, specs, opset=opset)
    offline = build_offline(step_bytes, specs, model.hop,
                            speaker_state=f"state.{model.SPEAKER_STATE}" if model.personalized else None)
    out_dir = Path(out_dir)
    card = dict(card or {})
    card.setdefault("name", out_dir.resolve().name)
    card.setdefault("parameters", count_parameters(model))
    card.setdefault("sample_rate", model.sample_rate)
    section = card_section(model, specs, max_mics, opset)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        step = onnx.load_from_string(step_bytes)
        metadata = {**section, "name": card["name"], "states": [s.to_json() for s in specs]}  # incl. "speaker"
        onnx.helper.set_model_props(step, {"speechnorm": json.dumps(metadata)})
        onnx.save(step, tmp / "model.onnx")
        onnx.save(offline, tmp / "model_offline.onnx")
        (tmp / "model_batch.onnx").write_bytes(batch_bytes)
        try:
            diffs = verify(model, tmp / "model.onnx", sorted({1, min(4, max_mics), max_mics}))
            batch_diff = verify_batch(OnnxModel(tmp / "model.onnx"), min(4, max_mics),
                                      speakers=verification_speakers(model, 3))
        except Exception as err:  # onnxruntime refusing the graph is a failed export too
            raise ExportError(f"onnxruntime could not run the exported graphs: {err}") from err
        worst = max(max(max(d.values()) for d in diffs.values()), batch_diff)
        if not worst <= tolerance:
            raise ExportError(f"exported graphs differ from PyTorch by {worst:.3g} > {tolerance:g} ({diffs}, batched vs "
                              f"one stream {batch_diff:.3g}); nothing written")
        section["verification"] = {
            "utterance": "speechnorm/assets/real_speech/conversation.flac, 4 s, mics = delayed copies + noise; "
                         "batch: 3 streams of it at gains 1, 0.1 and 2 in every call, each against its one-stream run",
            "max_abs_diff": diffs, "batch_max_abs_diff": batch_diff, "tolerance": tolerance, "runtime": "onnxruntime " + _ort_version(),
        }
        card["onnx"] = section
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("model.onnx", "model_offline.onnx", "model_batch.onnx"):
            shutil.move(tmp / name, out_dir / name)
    return write_card(out_dir, card)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
