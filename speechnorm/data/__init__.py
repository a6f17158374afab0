"""Data: audio I/O, corpora (on disk or synthetic), room simulation, datasets, the DataModule."""

from .audio_io import AudioFileError, read_audio, write_audio

__all__ = ["AudioFileError", "read_audio", "write_audio"]
