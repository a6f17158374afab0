"""How clean the corpus's "clean" speech is: DNSMOS P.835 (SIG, BAK, OVRL) of the dry utterances,
per split and source package, on a seeded sample of each.

    speechnorm data                                     # the corpus (once)
    python scripts/corpus_quality.py                    # 12 utterances per split and source
    python scripts/corpus_quality.py --per-source 40 --out results/corpus_quality.md
    python scripts/corpus_quality.py --all                          # every utterance, for the gate
    python scripts/corpus_quality.py --all --shard 0/2 & python scripts/corpus_quality.py --all --shard 1/2

``--all`` scores every speech utterance and writes ``SPEECH_DIR/quality-<shard>.csv`` (file,
dnsmos_sig, dnsmos_bak, dnsmos_ovrl), a row as each is scored; a rerun skips what any of those
files holds, so a stopped pass resumes. The data recipes' ``speech_quality_floor`` (e.g.
``{dnsmos_bak: 3.0}``) then leaves the training utterances below it out
(``speechnorm.data.corpus.screen``), as the DNS Challenge screened its clean speech with DNSMOS. ``--packages`` scores those sources first.

A model trained to reproduce its targets can sound no cleaner than they do, and an evaluation
clip's target bounds the DNSMOS any system can reach on it (``evaluate_real.py --target-row``
scores the targets themselves, room included). Scoring goes through ``speechnorm.scoring.dnsmos``,
the function every evaluation here uses. About one utterance per second per core on this CPU.
"""

from __future__ import annotations

import argparse
import collections
import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechnorm.data.corpus import QUALITY_KEYS, read_quality
from speechnorm.scoring import dnsmos

KEYS = QUALITY_KEYS


def score_file(path: Path) -> dict[str, float] | None:
    """DNSMOS of one utterance (channel 0); None, reported with its path, when it cannot be read."""
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        return dnsmos(torch.from_numpy(audio[:, 0]), rate)
    except (OSError, RuntimeError, ValueError) as error:  # a file the corpus build let through but cannot be read
        print(f"skipped {path}: {error}", flush=True)
        return None


def score_all(folder: Path, shard: tuple[int, int], first: list[str]) -> int:
    """Score every speech row of ``folder/manifest.csv`` not yet in its quality files (this shard's
    share: every n-th row), ``first`` packages first; returns how many were scored."""
    index, count = shard
    done = {Path(path).resolve() for path in read_quality(folder)}
    with (folder / "manifest.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("kind", "speech") == "speech"]
    rows = [row for i, row in enumerate(rows) if i % count == index]
    rows.sort(key=lambda row: (first.index(row["package"]) if row["package"] in first else len(first)))
    out = folder / f"quality-{index}of{count}.csv"
    fresh = not out.exists()
    scored = 0
    with out.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if fresh:
            writer.writerow(("file", *KEYS))
        for row in rows:
            path = folder / row["file"]
            if path.resolve() in done:
                continue
            values = score_file(path)
            if values is None:
                continue
            writer.writerow((row["file"], *(f"{values[k]:.4f}" for k in KEYS)))
            handle.flush()
            scored += 1
            if scored % 100 == 0:
                print(f"{out.name}: {scored} scored", flush=True)
    return scored


def sample_rows(manifest: Path, per_source: int, seed: int) -> dict[tuple[str, str], tuple[int, list[dict]]]:
    """{(split, package): (utterances in the group, a seeded sample of its rows)}, speech rows only."""
    groups = collections.defaultdict(list)
    with manifest.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("kind", "speech") == "speech":
                groups[(row["split"], row["package"])].append(row)
    rng = np.random.default_rng(seed)
    return {key: (len(rows), [rows[i] for i in sorted(rng.permutation(len(rows))[:per_source])])
            for key, rows in sorted(groups.items())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech-dir", default=".cache/real_corpus/speech", help="a folder with manifest.csv")
    parser.add_argument("--per-source", type=int, default=12, help="utterances scored per split and source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    parser.add_argument("--all", action="store_true", help="score every utterance into SPEECH_DIR/quality-*.csv")
    parser.add_argument("--shard", default="0/1", help="with --all: I/N scores every N-th utterance from the I-th")
    parser.add_argument("--packages", nargs="*", default=[], help="with --all: these sources first")
    args = parser.parse_args(argv)
    folder = Path(args.speech_dir)
    manifest = folder / "manifest.csv"
    if not manifest.exists():
        parser.error(f"{manifest} is missing: build the corpus with `speechnorm data`")
    torch.set_num_threads(1)
    if args.all:
        try:
            index, count = (int(part) for part in args.shard.split("/"))
            assert 0 <= index < count
        except (ValueError, AssertionError):
            parser.error(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}")
        print(f"scored {score_all(folder, (index, count), args.packages)} utterances")
        return 0
    lines = [f"DNSMOS of the dry speech of `{folder}`, {args.per_source} utterances per split and source "
             f"(seed {args.seed}): mean ± std.", "",
             "| split | source | utterances | scored | SIG | BAK | OVRL |", "|---|---|---:|---:|---:|---:|---:|"]
    for (split, package), (total, rows) in sample_rows(manifest, args.per_source, args.seed).items():
        scores = [s for s in (score_file(folder / row["file"]) for row in rows) if s is not None]
        if not scores:
            continue
        cells = [f"{np.mean([s[k] for s in scores]):.2f} ± {np.std([s[k] for s in scores]):.2f}" for k in KEYS]
        lines.append(f"| {split} | {package} | {total} | {len(scores)} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
