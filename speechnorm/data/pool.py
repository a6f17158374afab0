"""A split's speech or noise decoded once into one flat tensor, cropped by index arithmetic.

The same crops run on the CPU (a DataLoader worker) and on a GPU (the whole pool moved there once,
``to(device)``): ``crops`` gathers (B, N) stretches with one indexing call, no Python loop per item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass
class SignalPool:
    """audio: (T,) every file end to end; starts, lengths: (F,) where each file lies in it;
    labels: per file, its speaker (speech) or its kind (noise: "recorded" or "generated")."""

    audio: Tensor
    starts: Tensor
    lengths: Tensor
    labels: list[str]
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if len(self.starts) == 0:
            raise ValueError("a signal pool needs at least one file")
        if not (len(self.starts) == len(self.lengths) == len(self.labels)):
            raise ValueError("starts, lengths and labels must have one entry per file")
        self._by_label: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.starts)

    @classmethod
    def from_files(cls, files: list[Path], labels: list[str], sample_rate: int = 16_000,
                   dtype: torch.dtype = torch.float32) -> "SignalPool":
        """Decode ``files`` (mono mix, resampled to ``sample_rate``); unreadable ones are reported and left out."""
        from .audio_io import AudioFileError, read_audio

        pieces, kept, names = [], [], []
        for path, label in zip(files, labels):
            try:
                audio = read_audio(path, sample_rate)[0].mean(dim=0)
            except AudioFileError as err:
                log.warning("skipping %s", err)
                continue
            pieces.append(audio.to(dtype))
            kept.append(label)
            names.append(str(path))
        if not pieces:
            raise ValueError(f"none of the {len(files)} files could be read")
        return cls.from_arrays(pieces, kept, names)

    @classmethod
    def from_arrays(cls, pieces: list[Tensor], labels: list[str], names: list[str] | None = None) -> "SignalPool":
        lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
        if (lengths == 0).any():
            raise ValueError(f"empty signal in a pool: {names[int((lengths == 0).nonzero()[0])] if names else 'index'}")
        starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        return cls(torch.cat(pieces), starts, lengths, list(labels), list(names or []))

    def to(self, device) -> "SignalPool":
        return SignalPool(self.audio.to(device), self.starts.to(device), self.lengths.to(device), self.labels, self.names)

    def with_label(self, label: str) -> np.ndarray:
        """Indices of the files labelled ``label``."""
        if label not in self._by_label:
            self._by_label[label] = np.flatnonzero(np.array(self.labels) == label)
        return self._by_label[label]

    def crops(self, files: Tensor, offsets: Tensor, samples: int, tile: bool) -> Tensor:
        """(B, N) float32: file ``files[b]`` from ``offsets[b]``. ``tile``: the file repeats (noise);
        otherwise a short file sits at offset ``-offsets[b]`` (>= 0) in zeros and a long one is cut
        from ``offsets[b]``. On a GPU one gather; on the CPU a copy per crop, which is faster there."""
        device = self.audio.device
        files, offsets = files.to(device).long(), offsets.to(device).long()
        if device.type == "cpu":
            return torch.stack([self._crop(int(f), int(o), samples, tile) for f, o in zip(files, offsets)]) \
                if len(files) else torch.zeros(0, samples)
        start, length = self.starts[files][:, None], self.lengths[files][:, None]
        position = offsets[:, None] + torch.arange(samples, device=device)[None]  # (B, N)
        if tile:
            return self.audio[start + position % length].float()
        inside = (position >= 0) & (position < length)
        return self.audio[start + position.clamp(min=0).minimum(length - 1)].float() * inside

    def _crop(self, file: int, offset: int, samples: int, tile: bool) -> Tensor:
        start, length = int(self.starts[file]), int(self.lengths[file])
        signal = self.audio[start : start + length]
        if tile:
            offset %= length
            reps = -(-(offset + samples) // length)
            return (signal.repeat(reps) if reps > 1 else signal)[offset : offset + samples].float()
        out = torch.zeros(samples)
        first, last = max(offset, 0), min(offset + samples, length)
        if last > first:
            out[first - offset : last - offset] = signal[first:last]
        return out

def pools_from_corpus(corpus, dtype: torch.dtype = torch.float32) -> tuple[SignalPool, SignalPool]:
    """(speech, noise) pools of a ``corpus.Corpus`` split: speech labelled by speaker, noise by kind."""
    speech = SignalPool.from_files(corpus.clean, [corpus.speaker(p) for p in corpus.clean], corpus.sample_rate, dtype)
    recorded = set(map(str, corpus.noise_by_kind["recorded"]))
    labels = ["recorded" if str(p) in recorded else "generated" for p in corpus.noise]
    noise = SignalPool.from_files(corpus.noise, labels, corpus.sample_rate, dtype)
    return speech, noise
