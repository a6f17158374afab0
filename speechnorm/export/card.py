"""``card.json``: what a released or exported model is, read and written in this one place.

Export writes the ``onnx`` section (tensors, their names and meanings, verification); the release
script adds what it measured (metrics, the real-speech example, the corpus). Both go through
``write_card``, which merges into the card already in the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

CARD_FILE = "card.json"


def read_card(folder: str | Path) -> dict:
    """The folder's card, or {} when it has none; a broken card is an error that names the file."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); fix or remove it") from None


def write_card(folder: str | Path, fields: dict) -> dict:
    """Merge ``fields`` into the folder's card (top-level keys replaced) and write it; returns the card."""
    folder = Path(folder)
    card = {**read_card(folder), **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
    return card
