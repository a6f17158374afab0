"""Robustness to input level: the ablation's checkpoints on the same test clips scaled by −30, −15,
0 and +10 dB (input and target alike), scored by ``speechnorm evaluate``'s code.

    python scripts/level_robustness.py                                  # runs/norm_ablation, batch 8
    python scripts/level_robustness.py --runs runs/norm_ablation_1500 --name level_robustness_1500

A normalizer that tracks the statistics of the stream it sees (Online Norm, LayerNorm) should give
the same output at any level; one whose inference statistics were frozen in training (BatchNorm)
sees features it never saw. Per run the last checkpoint is scored at every level (cached in the
run's folder, ``levels.json``); the table gives, per setting, the mean ± standard deviation over
seeds of the enhanced SI-SDR at each level and the largest drop from 0 dB; the PNG draws it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_report import RUN_NAME, mean_std  # noqa: E402

from speechnorm.evaluate import evaluate  # noqa: E402

LEVELS = (-30.0, -15.0, 0.0, 10.0)


def score_levels(run: Path, levels, items: int, split: str) -> dict | None:
    """{level: {"enhanced": SI-SDR, "noisy": SI-SDR}} of the run's last checkpoint (cached)."""
    checkpoints = sorted(run.glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints or not (run / "DONE").exists():
        return None
    cache = run / "levels.json"
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("checkpoint") != checkpoints[-1].name or cached.get("items") != items or cached.get("split") != split:
        cached = {"checkpoint": checkpoints[-1].name, "items": items, "split": split, "levels": {}}
    for level in levels:
        if str(level) in cached["levels"]:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate(checkpoints[-1], split=split, out=tmp, items=items, pictures=0, dnsmos=False, gain_db=level)
        cached["levels"][str(level)] = {"enhanced": result["mean"]["enhanced/si_sdr"],
                                        "noisy": result["mean"]["noisy/si_sdr"], "clips": result["items"]}
        cache.write_text(json.dumps(cached, indent=2))
    return cached


def table(groups: dict[str, list[dict]], levels) -> str:
    clips = sorted({v["clips"] for runs in groups.values() for r in runs for v in r["levels"].values()})
    lines = [f"Enhanced SI-SDR (dB), mean ± standard deviation over seeds; the same {'/'.join(map(str, clips))} "
             "clips at every level (input and target scaled alike).", "",
             "| setting | seeds | " + " | ".join(f"{level:+.0f} dB" for level in levels) + " | largest drop from 0 dB |",
             "|---|---:|" + "---:|" * (len(levels) + 1)]
    for setting, runs in sorted(groups.items()):
        cells = [mean_std([r["levels"][str(level)]["enhanced"] for r in runs], 2) for level in levels]
        drops = [statistics.mean(r["levels"]["0.0"]["enhanced"] - r["levels"][str(level)]["enhanced"] for r in runs)
                 for level in levels]
        lines.append(f"| {setting} | {len(runs)} | " + " | ".join(cells) + f" | {max(drops):.2f} |")
    any_run = next(iter(groups.values()))[0]
    noisy = [f"{any_run['levels'][str(level)]['noisy']:.2f}" for level in levels]
    lines.append("| noisy input | | " + " | ".join(noisy) + " | |")
    return "\n".join(lines) + "\n"


def plot(groups: dict[str, list[dict]], levels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting, runs in sorted(groups.items()):
        values = [[r["levels"][str(level)]["enhanced"] for r in runs] for level in levels]
        means = [statistics.mean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.errorbar(levels, means, yerr=stds, marker="o", capsize=3, label=f"{setting} ({len(runs)} seeds)")
    ax.set_xlabel("input level relative to the recipe's (dB)")
    ax.set_ylabel("enhanced SI-SDR (dB)")
    ax.set_xticks(list(levels))
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/norm_ablation")
    parser.add_argument("--batch", type=int, default=8, help="runs at this batch size")
    parser.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default="results")
    parser.add_argument("--name", default="level_robustness")
    args = parser.parse_args(argv)
    levels = sorted(set(args.levels) | {0.0})
    groups: dict[str, list[dict]] = {}
    for run in sorted(p for p in Path(args.runs).iterdir() if p.is_dir() and RUN_NAME.match(p.name)):
        match = RUN_NAME.match(run.name)
        if int(match["batch"]) != args.batch:
            continue
        scored = score_levels(run, levels, args.items, args.split)
        if scored is not None:
            groups.setdefault(match["setting"], []).append(scored)
            print(f"{run.name}: scored", flush=True)
    if not groups:
        raise SystemExit(f"no finished runs at batch {args.batch} in {args.runs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(groups, indent=2))
    (out / f"{args.name}.md").write_text(table(groups, levels))
    plot(groups, levels, out / f"{args.name}.png")
    print((out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
