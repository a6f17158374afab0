"""Screening the training speech by what a listener hears (``speechnorm screen``).

Per utterance, cheap measures (``measures``):
- **noise floor**: its quietest 160 ms under the 95th percentile of its 20 ms frame levels (dB;
  the corpus build keeps 0.1 s of margin around each utterance: −50 is a quiet studio, −25 a
  noisy recording);
- **clipping**: the fraction of samples within 5 % of the peak (a lossy codec smears a clipped
  plateau, so runs of equal samples would miss it; unclipped speech has ~1e-4 there);
- **bandwidth**: the energy above 4 kHz relative to all of it, in active frames (dB; a file
  band-limited to 4 kHz sits below −40).

Per group of one speaker's consecutive utterances, joined with 0.2 s pauses to ~9 s (the length
DNSMOS rates: a 1.5 s utterance alone is tiled to 9 s, whose joins it scores as artefacts, and
costs as much), DNSMOS P.835 SIG, BAK and OVRL (``scoring.dnsmos``); each utterance takes its
group's scores.

The cheap measures go to ``SPEECH_DIR/screen-measures.csv``; only utterances that pass their floors
are DNSMOS-scored (``screen-dnsmos.csv``). Both grow row by row, so a stopped pass resumes.
``decide`` applies the floors and writes ``SPEECH_DIR/screen.csv`` (file, kept, reason); the recipes'
``data.speech_screen: true`` trains on the kept utterances only.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

log = logging.getLogger(__name__)
FRAME = 320
GROUP_SECONDS = 9.0
PAUSE = 0.2
CHEAP_FIELDS = ["file", "noise_floor_db", "clip_fraction", "high_band_db"]
DNSMOS_FIELDS = ["file", "group", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"]


@dataclass(frozen=True)
class Floors:
    """What a kept utterance must reach (the defaults keep what a listener would call clean)."""

    dnsmos_ovrl: float = 2.7
    dnsmos_bak: float = 3.6
    noise_floor_db: float = -35.0  # at most
    clip_fraction: float = 0.002  # at most
    high_band_db: float = -35.0  # at least


def measures(audio: np.ndarray, sample_rate: int = 16_000) -> dict[str, float]:
    """Noise floor, clipping and high-band energy of one utterance (module docstring)."""
    audio = np.asarray(audio, np.float64)
    frames = len(audio) // FRAME
    if frames < 2:
        raise ValueError(f"an utterance of {len(audio)} samples is too short to measure (40 ms or more)")
    power = np.mean(audio[: frames * FRAME].reshape(frames, FRAME) ** 2, axis=1) + 1e-12
    level = 10 * np.log10(power)
    # the quietest 160 ms (the build keeps 0.1 s of margin around each utterance) under the speech
    floor = float(np.mean(np.sort(level)[: min(8, frames)]) - np.percentile(level, 95))
    peak = np.abs(audio).max()
    # clipping: samples within 5 % of the peak (a lossy codec smears a clipped plateau, so runs of
    # equal samples would miss it); unclipped speech has a handful there, about 1e-4 of its samples
    flat = int(np.count_nonzero(np.abs(audio) >= 0.95 * peak)) if peak > 0 else 0
    active = level > np.percentile(level, 95) - 30
    spectrum = np.abs(np.fft.rfft(audio[: frames * FRAME].reshape(frames, FRAME)[active] * np.hanning(FRAME), axis=1)) ** 2
    freqs = np.fft.rfftfreq(FRAME, 1 / sample_rate)
    high = spectrum[:, freqs >= 4000].sum() / max(spectrum.sum(), 1e-20)
    return {"noise_floor_db": floor, "clip_fraction": flat / len(audio), "high_band_db": float(10 * np.log10(high + 1e-12))}


def groups(rows: list[dict], seconds: float = GROUP_SECONDS) -> list[list[dict]]:
    """Consecutive utterances of one speaker (manifest order) joined up to ``seconds`` each."""
    out, current, total, who = [], [], 0.0, None
    for row in rows:
        speaker = row.get("speaker") or row["file"].split("/")[0]
        if current and (speaker != who or total >= seconds):
            out.append(current)
            current, total = [], 0.0
        current.append(row)
        total += float(row["seconds"]) + PAUSE
        who = speaker
    if current:
        out.append(current)
    return out


def _read(path: Path) -> dict[str, dict]:
    """Rows by file of ``path`` and of its shards (``NAME-IofN.csv`` beside it)."""
    rows = {}
    for part in [path, *sorted(path.parent.glob(f"{path.stem}-*of*.csv"))]:
        if part.exists():
            with open(part, newline="") as handle:
                rows.update({r["file"]: r for r in csv.DictReader(handle)})
    return rows


def _speech_rows(folder: Path) -> list[dict]:
    with open(folder / "manifest.csv", newline="") as handle:
        return [r for r in csv.DictReader(handle) if r.get("kind", "speech") == "speech"]


def score(folder: str | Path, floors: "Floors" = None, packages: list[str] | None = None, progress=None,
          shard: tuple[int, int] = (0, 1)) -> int:
    """Measure every speech utterance of ``folder/manifest.csv`` (``screen-measures.csv``), then
    DNSMOS-score, in groups, those that pass the cheap ``floors`` (``screen-dnsmos.csv``;
    ``packages`` first). Both files grow row by row, so a stopped pass resumes. ``shard`` (I, N):
    this process scores every N-th group from the I-th, into ``screen-dnsmos-IofN.csv`` (run N
    processes side by side once the cheap pass is done). Returns how many utterances DNSMOS scored."""
    from ..scoring import dnsmos

    folder, floors = Path(folder), floors or Floors()
    rows = _speech_rows(folder)
    index, shards = shard
    cheap_path = folder / "screen-measures.csv"
    dnsmos_path = folder / ("screen-dnsmos.csv" if shards == 1 else f"screen-dnsmos-{index}of{shards}.csv")
    cheap = _read(cheap_path)
    with open(cheap_path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CHEAP_FIELDS)
        if not cheap:
            writer.writeheader()
        for row in rows:
            if row["file"] in cheap:
                continue
            try:
                audio, rate = sf.read(folder / row["file"], dtype="float32", always_2d=True)
                values = {k: f"{v:.5g}" for k, v in measures(audio.mean(axis=1), rate).items()}
            except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
                log.warning("skipping %s: %s", folder / row["file"], err)
                values = {k: "nan" for k in CHEAP_FIELDS[1:]}
            cheap[row["file"]] = {"file": row["file"], **values}
            writer.writerow(cheap[row["file"]])
    scored = _read(folder / "screen-dnsmos.csv")
    first = packages or []
    todo = [r for r in rows if r["file"] not in scored and _failure(cheap[r["file"]], floors, cheap_only=True) == ""]
    todo.sort(key=lambda r: first.index(r["package"]) if r["package"] in first else len(first))
    count = 0
    fresh = not dnsmos_path.exists()
    with open(dnsmos_path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=DNSMOS_FIELDS)
        if fresh:
            writer.writeheader()
        for number, group in enumerate(groups(todo)[index::shards]):
            pieces = []
            for row in group:
                audio, rate = sf.read(folder / row["file"], dtype="float32", always_2d=True)
                pieces += [audio.mean(axis=1), np.zeros(int(PAUSE * rate), np.float32)]
            quality = dnsmos(torch.from_numpy(np.concatenate(pieces)), rate)
            name = f"{group[0]['file']}+{len(group) - 1}"
            for row in group:
                writer.writerow({"file": row["file"], "group": name, **{k: f"{v:.4f}" for k, v in quality.items()}})
            handle.flush()
            count += len(group)
            if progress is not None and number % 25 == 0:
                progress(f"screen: {count} of {len(todo)} utterances scored by DNSMOS")
    return count


def decide(folder: str | Path, floors: Floors = Floors()) -> dict[str, dict]:
    """Apply ``floors`` to the measures and write ``screen.csv`` (file, kept, reason). Returns
    {file: {kept, reason, package, speaker, split, seconds, dnsmos_ovrl}} for reports. An
    utterance not measured or not DNSMOS-scored yet is not kept (reason "unscored")."""
    folder = Path(folder)
    cheap, scores = _read(folder / "screen-measures.csv"), _read(folder / "screen-dnsmos.csv")
    if not cheap:
        raise FileNotFoundError(f"{folder / 'screen-measures.csv'} is missing: run `speechnorm screen --speech-dir {folder}` first")
    decisions = {}
    for row in _speech_rows(folder):
        values = {**cheap.get(row["file"], {}), **scores.get(row["file"], {})}
        reason = _failure(values, floors) if row["file"] in cheap else "unscored"
        decisions[row["file"]] = {"kept": reason == "", "reason": reason, "package": row["package"],
                                  "speaker": row["speaker"], "split": row["split"], "seconds": float(row["seconds"]),
                                  "dnsmos_ovrl": float(values.get("dnsmos_ovrl", "nan"))}
    with open(folder / "screen.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "kept", "reason"])
        for file, d in decisions.items():
            writer.writerow([file, int(d["kept"]), d["reason"]])
    return decisions


def _failure(values: dict, floors: Floors, cheap_only: bool = False) -> str:
    """The floors ``values`` misses, comma-separated ("" when it passes); a missing DNSMOS score is "unscored"."""
    number = lambda key: float(values.get(key, "nan"))
    checks = [("noise_floor_db", number("noise_floor_db") <= floors.noise_floor_db),
              ("clip_fraction", number("clip_fraction") <= floors.clip_fraction),
              ("high_band_db", number("high_band_db") >= floors.high_band_db)]
    failed = [name for name, ok in checks if not ok]
    if cheap_only or failed:
        return ",".join(failed)
    if "dnsmos_ovrl" not in values:
        return "unscored"
    checks = [("dnsmos_ovrl", number("dnsmos_ovrl") >= floors.dnsmos_ovrl), ("dnsmos_bak", number("dnsmos_bak") >= floors.dnsmos_bak)]
    return ",".join(name for name, ok in checks if not ok)


def read_dnsmos(folder: str | Path) -> dict[str, float]:
    """{resolved path: dry DNSMOS OVRL} of the utterances the screen scored (``screen-dnsmos.csv``)."""
    return {str((Path(folder) / file).resolve()): float(row["dnsmos_ovrl"])
            for file, row in _read(Path(folder) / "screen-dnsmos.csv").items()}


def read_kept(folder: str | Path) -> set[str]:
    """Resolved paths of the utterances ``screen.csv`` keeps."""
    path = Path(folder) / "screen.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `speechnorm screen --speech-dir {folder}`")
    with open(path, newline="") as handle:
        return {str((Path(folder) / r["file"]).resolve()) for r in csv.DictReader(handle) if r["kept"] == "1"}


def report(decisions: dict[str, dict]) -> str:
    """Markdown: hours and voices per source and split, before and after the screen, and the median
    DNSMOS OVRL of what is kept."""
    lines = ["| split | source | hours | kept hours | voices | kept voices | median OVRL kept |",
             "|---|---|---:|---:|---:|---:|---:|"]
    keys = sorted({(d["split"], d["package"]) for d in decisions.values()})
    for split, package in keys + [(s, "all") for s in ("train", "val", "test")]:
        chosen = [d for d in decisions.values() if d["split"] == split and package in ("all", d["package"])]
        if not chosen:
            continue
        kept = [d for d in chosen if d["kept"]]
        median = np.median([d["dnsmos_ovrl"] for d in kept]) if kept else float("nan")
        lines.append(f"| {split} | {package} | {sum(d['seconds'] for d in chosen) / 3600:.2f} | "
                     f"{sum(d['seconds'] for d in kept) / 3600:.2f} | {len({d['speaker'] for d in chosen})} | "
                     f"{len({d['speaker'] for d in kept})} | {median:.2f} |")
    return "\n".join(lines)
