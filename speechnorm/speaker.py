"""Speaker embeddings from enrollment audio: who the target speaker is, for personalized enhancement.

    from speechnorm.speaker import embed_file
    embedding, info = embed_file("me.wav")       # (256,) float32, unit length

    speechnorm enroll me.wav -o me.npy

The encoder is a GE2E speaker encoder (3-layer LSTM over 40 mel bands at 16 kHz, 256-d
embedding, Wan et al. 2018) with the pretrained weights that the ``resemblyzer`` wheel ships
(``resemblyzer/pretrained.pt``, Apache-2.0; its licence is in that wheel's ``dist-info`` and the
notice in ``speechnorm/assets/speaker_encoder/NOTICE``). Only the weights file is used: the
wheel is installed with ``--no-deps`` and never imported, because its declared dependencies pull
in ``webrtcvad`` (a C build) and the ``typing`` backport. The front end (volume normalisation,
speech detection, mel frames, 1.6 s partial windows averaged into one unit vector) is written
here to the encoder's published settings.

Enrollment wants 2–30 s of the target's speech, alone. It refuses, each with a clear reason:
audio that is not finite, a rate below 16 kHz (the encoder hears up to 8 kHz), silence, less than
2 s of speech (or noise without speech), and more than 120 s of audio (only the first 30 s of
speech would be used; cut it). Higher rates are resampled; multi-channel audio uses channel 0.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
MELS = 40
PARTIAL = 160  # frames per partial window (1.6 s)
PARTIALS_PER_SECOND = 1.3
MIN_COVERAGE = 0.75  # the last partial window is kept if at least this much of it is audio
EMBEDDING = 256
MIN_SPEECH_S = 2.0
MAX_SPEECH_S = 30.0
MAX_AUDIO_S = 120.0
TARGET_DBFS = -30.0
SILENT_DBFS = -60.0
VAD_FRAME = 480  # 30 ms


class EnrollmentError(ValueError):
    """Enrollment audio that cannot give a speaker embedding; the message says why."""


@dataclass(frozen=True)
class Enrollment:
    speech_seconds: float  # speech found (before the 30 s cap)
    used_seconds: float  # speech the embedding was computed from
    partials: int  # 1.6 s windows averaged
    source_rate: int


def encoder_weights() -> Path:
    """The pretrained encoder's weights, from the installed ``resemblyzer`` wheel (not imported)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise EnrollmentError("speaker enrollment needs the pretrained voice encoder that the resemblyzer wheel ships: "
                              "pip install --no-deps resemblyzer==0.1.4 (Apache-2.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
    if not path.is_file():
        raise EnrollmentError(f"the resemblyzer package at {path.parent} has no pretrained.pt; reinstall it: "
                              "pip install --no-deps --force-reinstall resemblyzer==0.1.4")
    return path


_ENCODER = None


def encoder():
    """The encoder (torch), loaded once."""
    global _ENCODER
    if _ENCODER is None:
        import torch

        class SpeakerEncoder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = torch.nn.LSTM(MELS, EMBEDDING, 3, batch_first=True)
                self.linear = torch.nn.Linear(EMBEDDING, EMBEDDING)

            def forward(self, mels):  # (N, frames, 40) -> (N, 256), unit length, non-negative
                _, (hidden, _) = self.lstm(mels)
                raw = torch.relu(self.linear(hidden[-1]))
                return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)

        model = SpeakerEncoder()
        state = torch.load(encoder_weights(), map_location="cpu", weights_only=True)["model_state"]
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
        _ENCODER = model.eval()
    return _ENCODER


@functools.lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """(40, 201) triangular mel filters, Slaney's mel scale and area normalisation."""
    import torch
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(WINDOW // 2 + 1, 0.0, SAMPLE_RATE / 2, MELS, SAMPLE_RATE, norm="slaney",
                                               mel_scale="slaney")
    return fb.to(torch.float64).numpy().T


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """(frames, 40) mel power spectrogram: 25 ms Hann windows every 10 ms, centred (reflect pad)."""
    padded = np.pad(wav.astype(np.float64), WINDOW // 2, mode="reflect")
    count = 1 + (len(padded) - WINDOW) // HOP
    index = np.arange(WINDOW)[None, :] + HOP * np.arange(count)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann
    power = np.abs(np.fft.rfft(padded[index] * window, axis=1)) ** 2
    return (power @ _mel_filters().T).astype(np.float32)


def speech_mask(wav: np.ndarray) -> np.ndarray:
    """Per 30 ms frame: speech or not. Speech is what rises well above the recording's floor
    (10 dB over its 10th-percentile frame energy, and within 45 dB of its loudest), smoothed over
    240 ms and kept with 180 ms of context; stationary noise never rises above its own floor."""
    frames = len(wav) // VAD_FRAME
    energy = np.square(wav[: frames * VAD_FRAME].astype(np.float64).reshape(frames, VAD_FRAME)).mean(axis=1)
    level = 10 * np.log10(energy + 1e-12)
    floor, peak = np.percentile(level, 10), level.max()
    active = (level > floor + 10.0) & (level > peak - 45.0)
    smooth = np.convolve(active.astype(float), np.ones(8) / 8, mode="same") > 0.5
    return np.convolve(smooth.astype(float), np.ones(13), mode="same") > 0  # ± 6 frames of context


def _partials(frames: int) -> list[slice]:
    """1.6 s windows at 1.3 per second covering the frames; the last kept if 75 % covered."""
    step = int(round(SAMPLE_RATE / PARTIALS_PER_SECOND / HOP))
    starts = list(range(0, max(frames - PARTIAL, 0) + 1, step))  # never empty: 0 is always in it
    last = starts[-1] + step
    if starts[-1] + PARTIAL < frames and (frames - last) / PARTIAL >= MIN_COVERAGE:
        starts.append(last)
    return [slice(s, s + PARTIAL) for s in starts]


def embed(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, Enrollment]:
    """The speaker embedding (256,) float32, unit length, of enrollment audio (samples,) or
    (channels, samples), and what was used. Raises ``EnrollmentError`` with the reason."""
    audio = np.asarray(audio)
    if audio.ndim == 2:
        audio = audio[0]
    if audio.ndim != 1 or audio.size == 0:
        raise EnrollmentError(f"enrollment audio must be (samples,) or (channels, samples), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise EnrollmentError(f"enrollment audio must be floating point in [-1, 1], got {audio.dtype}")
    if not np.isfinite(audio).all():
        raise EnrollmentError("enrollment audio contains NaN or inf")
    if sample_rate < SAMPLE_RATE:
        raise EnrollmentError(f"enrollment audio is at {sample_rate} Hz; the speaker encoder needs at least "
                              f"{SAMPLE_RATE} Hz (it hears up to {SAMPLE_RATE // 2000} kHz)")
    if audio.size / sample_rate > MAX_AUDIO_S:
        raise EnrollmentError(f"enrollment audio is {audio.size / sample_rate:.0f} s long; give 2–30 s of the "
                              f"speaker (at most {MAX_AUDIO_S:.0f} s of audio)")
    if sample_rate != SAMPLE_RATE:
        from .data.resample import resample

        audio = resample(audio[None].astype(np.float32), sample_rate, SAMPLE_RATE)[0]
    rms = float(np.sqrt(np.mean(np.square(audio.astype(np.float64)))))
    if rms == 0.0 or 20 * np.log10(rms) < SILENT_DBFS:
        raise EnrollmentError(f"enrollment audio is silent (below {SILENT_DBFS:.0f} dBFS)")
    mask = np.repeat(speech_mask(audio), VAD_FRAME)
    speech = audio[: mask.size][mask]
    found = speech.size / SAMPLE_RATE
    if found < MIN_SPEECH_S:
        raise EnrollmentError(f"enrollment audio has {found:.1f} s of speech; it needs at least {MIN_SPEECH_S:.0f} s "
                              "of the speaker alone (silence or noise only?)")
    speech = speech[: int(MAX_SPEECH_S * SAMPLE_RATE)].astype(np.float64)
    gain = 10 ** ((TARGET_DBFS - 20 * np.log10(np.sqrt(np.mean(speech ** 2)))) / 20)
    speech = speech * max(gain, 1.0)  # raise quiet speech to -30 dBFS, never lower it
    mels = mel_frames(speech)
    windows = _partials(len(mels))
    if windows[-1].stop > len(mels):
        mels = np.pad(mels, ((0, windows[-1].stop - len(mels)), (0, 0)))

    import torch

    with torch.no_grad():
        partial = encoder()(torch.from_numpy(np.stack([mels[w] for w in windows])))
    mean = partial.mean(dim=0).numpy()
    embedding = (mean / np.linalg.norm(mean)).astype(np.float32)
    return embedding, Enrollment(found, speech.size / SAMPLE_RATE, len(windows), sample_rate)


def embed_file(path: str | Path) -> tuple[np.ndarray, Enrollment]:
    """``embed`` on an audio file (any rate ≥ 16 kHz, channel 0)."""
    from .data.audio_io import read_audio

    audio, rate = read_audio(path, check_clipping=False)
    return embed(audio.numpy(), rate)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
