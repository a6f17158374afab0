"""One resampling path (soxr, high quality) for corpora, files, streams and the server.

``resample`` converts a whole signal (``played_faster``: speed perturbation); ``StreamResampler`` converts a stream chunk by chunk and
gives exactly the samples ``resample`` gives for the whole, whatever the chunking.
"""

from __future__ import annotations

import numpy as np
import soxr


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """(channels, samples) float32 at ``from_rate`` -> (channels, samples') at ``to_rate``."""
    if from_rate == to_rate:
        return audio
    return np.ascontiguousarray(soxr.resample(np.ascontiguousarray(audio.T), from_rate, to_rate).T, dtype=np.float32)


def played_faster(audio: np.ndarray, rate: int, speed: float) -> np.ndarray:
    """(channels, samples) at ``rate`` played ``speed`` times as fast (speed perturbation): as if
    recorded at ``rate * speed``, resampled to ``rate``; pitch and formants scale with ``speed``."""
    return audio if speed == 1.0 else resample(audio, round(rate * speed), rate)


class StreamResampler:
    """Chunk by chunk: ``process`` (channels, n) -> what is ready; ``flush`` -> the rest."""

    def __init__(self, from_rate: int, to_rate: int, channels: int):
        self.from_rate, self.to_rate, self.channels = from_rate, to_rate, channels
        self.identity = from_rate == to_rate
        self._stream = None if self.identity else soxr.ResampleStream(from_rate, to_rate, channels, dtype="float32")

    def process(self, chunk: np.ndarray, last: bool = False) -> np.ndarray:
        if self.identity:
            return chunk
        out = self._stream.resample_chunk(np.ascontiguousarray(chunk.T, dtype=np.float32), last=last)
        return np.ascontiguousarray(out.reshape(-1, self.channels).T)

    def flush(self) -> np.ndarray:
        return self.process(np.zeros((self.channels, 0), np.float32), last=True)

    def reset(self) -> None:
        if not self.identity:
            self._stream.clear()
