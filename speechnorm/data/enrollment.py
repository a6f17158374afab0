"""Speaker embeddings of corpus utterances, for personalized training: computed once per file
(``speechnorm.speaker.embed``), kept in memory and, with a cache folder, on disk.

An utterance that cannot enroll (under 2 s of speech, silence) is remembered as unusable, so it is
neither retried nor chosen again; the reason is logged once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
UNUSABLE = np.zeros(0, np.float32)  # stored for a file that cannot enroll


class EmbeddingCache:
    """``cache.get(path)`` -> (256,) unit embedding, or None when the file cannot enroll.
    ``get(path, speed=f)``: the embedding of the file played ``f`` times as fast (a pseudo-speaker,
    ``dataset.Personalization.voice_speeds``), cached under its own key."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self._memory: dict[str, np.ndarray] = {}

    def _key(self, path: Path, speed: float = 1.0) -> str:
        stat = path.stat()
        text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}" + ("" if speed == 1.0 else f"|speed {speed!r}")
        return hashlib.sha1(text.encode()).hexdigest()[:20]

    def get(self, path: str | Path, speed: float = 1.0) -> np.ndarray | None:
        path = Path(path)
        key = self._key(path, speed)
        if key not in self._memory:
            self._memory[key] = self._load_or_compute(path, key, speed)
        value = self._memory[key]
        return None if value.size == 0 else value

    def _load_or_compute(self, path: Path, key: str, speed: float = 1.0) -> np.ndarray:
        stored = self.folder / f"{key}.npy" if self.folder else None
        if stored is not None and stored.exists():
            return np.load(stored)
        from ..speaker import EnrollmentError, embed, embed_file
        from .audio_io import read_audio
        from .resample import played_faster, resample

        try:
            if speed == 1.0:
                value = embed_file(path)[0]
            else:  # played faster or slower, as the dataset plays the target: at 16 kHz, resampled
                audio, rate = read_audio(path, check_clipping=False)
                if rate < 16_000:  # refused as at speed 1 (``embed``), not upsampled into a usable one
                    raise EnrollmentError(f"enrollment audio is at {rate} Hz; the speaker encoder needs at least 16000 Hz")
                value = embed(played_faster(resample(audio.numpy(), rate, 16_000), 16_000, speed), 16_000)[0]
        except EnrollmentError as err:
            log.info("%s cannot enroll its speaker: %s", path, err)
            value = UNUSABLE
        if stored is not None:
            stored.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=stored.parent, suffix=".npy", delete=False) as tmp:
                np.save(tmp, value)
            os.replace(tmp.name, stored)  # atomic: workers never read half a file
        return value
