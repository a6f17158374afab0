"""Files that ship with the package: real recorded speech and the bundled noisy example."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
REAL_SPEECH = ASSETS / "real_speech" / "conversation.flac"
EXAMPLE = ASSETS / "example_4mic.flac"
