"""Data: audio I/O, corpora (on disk, from packages or synthetic), room simulation, datasets, the DataModule.

Nothing is imported eagerly: ``speechnorm.data.resample`` serves the torch-free runtime
(``speechnorm enhance``/``serve``), the rest needs the training install.
"""

__all__ = ["AudioFileError", "read_audio", "write_audio"]


def __getattr__(name: str):
    if name in __all__:
        from . import audio_io

        return getattr(audio_io, name)
    raise AttributeError(f"module 'speechnorm.data' has no attribute {name!r}")
