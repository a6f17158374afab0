"""The versioned JSON descriptions of files the data engine writes (a room bank, a corpus pack)."""

from __future__ import annotations

import json
from pathlib import Path


def read_versioned(path: Path, version: int, error: type[Exception], what: str, missing: str, stale: str) -> dict:
    """``path``'s JSON, refused with ``error`` naming the file when it is absent (``missing``: what
    to do), not JSON, or of another ``version`` (``stale``: what to do)."""
    if not path.exists():
        raise error(f"{path.parent} holds no {what} (no {path.name}): {missing}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path}: not JSON ({err})") from None
    if meta.get("version") != version:
        raise error(f"{path}: {what.split()[-1]} version {meta.get('version')}, this speechnorm reads version {version}: {stale}")
    return meta
