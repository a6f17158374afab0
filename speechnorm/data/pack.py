"""A corpus pack that travels: the screened speech and the noise as Ogg Opus, with its manifest.

``speechnorm data --pack DIR`` writes, within a size budget (default 30 MiB, so that the tracked tree
and the pack fit the 64 MiB a GPU machine receives):

- ``pack.json``: version, sample rate, and one entry per utterance or noise piece (name, kind,
  split, speaker or noise kind, package, licence, which stream, its offset and length in samples);
- ``speech-NNN.ogg`` / ``noise-NNN.ogg``: the pieces end to end, about 10 minutes per stream
  (one Ogg header per stream, not per 1.5 s utterance). Opus at ``compression_level`` 0.9 is
  about 31 kbit/s for speech at 16 kHz (measured: PESQ-wb 4.55, SI-SDR 24 dB for the round trip
  of 90 s of one voice); decoding runs 130-290x real time on one core.

Speech goes in first (the screen's kept training utterances, and the validation utterances; the
test voices stay at home), then noise of the same splits, piece by piece, until the budget is reached. ``read`` decodes a pack
into ``SignalPool``s per split, on the CPU or straight onto a GPU.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from .pool import SignalPool
from .versioned import read_versioned

PACK_VERSION = 1
SAMPLE_RATE = 16_000
STREAM_SECONDS = 600.0


class PackError(ValueError):
    """A pack that cannot be read or written; the message names the file."""


def write(out: str | Path, speech_dir: str | Path, noise_dir: str | Path, budget_mib: float = 30.0,
          speech_level: float = 0.9, noise_level: float = 1.0, screened: bool = True,
          splits: tuple[str, ...] = ("train", "val")) -> dict:
    """Write the pack of a ``speechnorm data`` corpus to ``out``; returns its summary (bytes,
    seconds and entries per kind). ``screened``: training speech only where ``screen.csv`` keeps it.
    ``splits``: what travels (training needs train and val; the test voices stay at home)."""
    out, speech_dir, noise_dir = Path(out), Path(speech_dir), Path(noise_dir)
    rows = {kind: [r for r in _manifest(folder) if r["split"] in splits]
            for kind, folder in (("speech", speech_dir), ("noise", noise_dir))}
    if screened:
        from .screen import read_kept

        kept = read_kept(speech_dir)
        rows["speech"] = [r for r in rows["speech"] if r["split"] != "train" or str((speech_dir / r["file"]).resolve()) in kept]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.ogg"):
        old.unlink()
    budget = int(budget_mib * 2**20)
    used, entries, streams = 0, [], []
    for kind, folder, level in (("speech", speech_dir, speech_level), ("noise", noise_dir, noise_level)):
        pending, seconds = [], 0.0
        for row in rows[kind] + [None]:
            if row is not None:
                audio, rate = sf.read(folder / row["file"], dtype="float32", always_2d=True)
                if rate != SAMPLE_RATE:
                    raise PackError(f"{folder / row['file']}: {rate} Hz; a pack holds the corpus's {SAMPLE_RATE} Hz")
                pending.append((row, audio.mean(axis=1)))
                seconds += len(audio) / rate
            if pending and (row is None or seconds >= STREAM_SECONDS):
                data = _encode(np.concatenate([a for _, a in pending]), level)
                if used + len(data) > budget:  # what fits of this stream, piece by piece
                    pending = _fit(pending, budget - used, level)
                    data = _encode(np.concatenate([a for _, a in pending]), level) if pending else b""
                if pending:
                    name = f"{kind}-{len([s for s in streams if s['kind'] == kind]):03d}.ogg"
                    (out / name).write_bytes(data)
                    offset = 0
                    for piece_row, audio in pending:
                        entries.append({"name": piece_row["file"], "kind": kind, "split": piece_row["split"],
                                        "label": piece_row["speaker"] if kind == "speech" else _noise_kind(piece_row),
                                        "package": piece_row["package"], "licence": piece_row["licence"],
                                        "stream": name, "offset": offset, "length": len(audio)})
                        offset += len(audio)
                    streams.append({"file": name, "kind": kind, "samples": offset, "bytes": len(data)})
                    used += len(data)
                pending, seconds = [], 0.0
                if used >= budget * 0.999:
                    break
    meta = {"version": PACK_VERSION, "sample_rate": SAMPLE_RATE, "codec": "Ogg Opus (libsndfile)",
            "levels": {"speech": speech_level, "noise": noise_level}, "budget_bytes": budget, "streams": streams,
            "entries": entries}
    tmp = out / "pack.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, out / "pack.json")
    return summary(meta)


def _manifest(folder: Path) -> list[dict]:
    path = folder / "manifest.csv"
    if not path.exists():
        raise PackError(f"{path} is missing: a pack is made from a `speechnorm data` corpus")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _noise_kind(row: dict) -> str:
    return "generated" if row.get("package", "speechnorm") == "speechnorm" else "recorded"


def _encode(audio: np.ndarray, level: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1), SAMPLE_RATE, format="OGG", subtype="OPUS", compression_level=level)
    return buffer.getvalue()


def _fit(pending: list, room: int, level: float) -> list:
    """The longest head of ``pending`` whose stream fits in ``room`` bytes (bisection on pieces)."""
    low, high = 0, len(pending)
    while low < high:
        middle = (low + high + 1) // 2
        if len(_encode(np.concatenate([a for _, a in pending[:middle]]), level)) <= room:
            low = middle
        else:
            high = middle - 1
    return pending[:low]


def summary(meta: dict) -> dict:
    out = {"bytes": sum(s["bytes"] for s in meta["streams"])}
    for kind in ("speech", "noise"):
        chosen = [e for e in meta["entries"] if e["kind"] == kind]
        out[kind] = {"entries": len(chosen), "hours": round(sum(e["length"] for e in chosen) / SAMPLE_RATE / 3600, 3),
                     "voices": len({e["label"] for e in chosen}) if kind == "speech" else None,
                     "bytes": sum(s["bytes"] for s in meta["streams"] if s["kind"] == kind)}
    return out


def load_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / "pack.json"
    meta = read_versioned(path, PACK_VERSION, PackError, "corpus pack",
                          f"write one with `speechnorm data --pack {folder}`", "write the pack again")
    if meta.get("sample_rate") != SAMPLE_RATE:
        raise PackError(f"{path}: a pack at {meta.get('sample_rate')} Hz; speechnorm's models run at {SAMPLE_RATE} Hz")
    return meta


def read(folder: str | Path, split: str, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32) -> tuple[SignalPool, SignalPool]:
    """(speech, noise) pools of ``split`` from the pack in ``folder``, decoded onto ``device``.
    A split without noise of its own borrows all the pack's noise (a pack cut by its budget)."""
    folder = Path(folder)
    meta = load_meta(folder)
    decoded: dict[str, np.ndarray] = {}

    def stream(name: str) -> np.ndarray:
        if name not in decoded:
            path = folder / name
            try:
                audio, rate = sf.read(path, dtype="float32", always_2d=True)
            except (OSError, RuntimeError, sf.LibsndfileError) as err:
                raise PackError(f"{path}: cannot be decoded ({str(err).strip()[:200]}); write the pack again") from None
            if rate != SAMPLE_RATE:
                raise PackError(f"{path}: {rate} Hz, the pack says {SAMPLE_RATE} Hz")
            expected = next((s["samples"] for s in meta["streams"] if s["file"] == name), None)
            if expected is not None and audio.shape[0] != expected:
                raise PackError(f"{path}: {audio.shape[0]} samples, pack.json says {expected}: the pack is damaged")
            decoded[name] = audio[:, 0]
        return decoded[name]

    pools = []
    for kind in ("speech", "noise"):
        chosen = [e for e in meta["entries"] if e["kind"] == kind and e["split"] == split]
        if not chosen and kind == "noise":
            chosen = [e for e in meta["entries"] if e["kind"] == kind]
        if not chosen:
            raise PackError(f"{folder}: the pack holds no {kind} of split {split!r}")
        pieces = [torch.from_numpy(stream(e["stream"])[e["offset"] : e["offset"] + e["length"]].copy()).to(dtype)
                  for e in chosen]
        pools.append(SignalPool.from_arrays(pieces, [e["label"] for e in chosen], [e["name"] for e in chosen]).to(device))
    return pools[0], pools[1]
