"""Reading and writing audio files (soundfile), with the checks a corpus needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from .resample import resample

MIN_SAMPLE_RATE = 8000
CLIP_LEVEL = 0.999
CLIP_FRACTION = 0.001  # more than 0.1 % of samples at full scale: clipped


class AudioFileError(ValueError):
    """An audio file that cannot be used, with its path in the message."""


def read_audio(path: str | Path, sample_rate: int | None = None, check_clipping: bool = True) -> tuple[Tensor, int]:
    """Read ``path`` as float32 (channels, samples); resample to ``sample_rate`` when given.

    Raises AudioFileError (naming the file) for unreadable, empty, non-finite or (unless
    ``check_clipping`` is off, e.g. for impulse responses peaking at 1) clipped audio, and for
    rates below 8 kHz.
    """
    path = Path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt files
        raise AudioFileError(f"{path}: cannot read audio ({err})") from None
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: empty (0 samples)")
    if rate < MIN_SAMPLE_RATE:
        raise AudioFileError(f"{path}: sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz")
    if not np.isfinite(data).all():
        raise AudioFileError(f"{path}: contains NaN or inf samples")
    if check_clipping and (np.abs(data) >= CLIP_LEVEL).mean() > CLIP_FRACTION:
        raise AudioFileError(f"{path}: clipped (over {CLIP_FRACTION:.1%} of samples at full scale)")
    audio = np.ascontiguousarray(data.T)
    if sample_rate is not None and rate != sample_rate:
        audio, rate = resample(audio, rate, sample_rate), sample_rate
    return torch.from_numpy(audio), rate


def write_audio(path: str | Path, audio: Tensor, sample_rate: int) -> None:
    """Write (channels, samples) or (samples,) float audio as 16-bit PCM WAV/FLAC (by suffix)."""
    data = audio.detach().cpu().float()
    data = data.T if data.dim() == 2 else data
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")
