"""The normalization ablation's table over seeds: test metrics, train/inference asymmetry, time
per step, and every run's validation curve.

    recipes/norm_ablation/run.sh                   # trains every setting x batch size x seed
    python scripts/ablation_report.py              # scores runs/norm_ablation/*, writes results/ablation.{md,json,png}
    python scripts/ablation_report.py --watch      # scores each run as it finishes (beside the sweep)

Per run (``<setting>_b<batch>_s<seed>``, e.g. ``online-alpha_fwd0.99_b8_s1``), cached in the run's
folder (``report.json``) so that a finished run is scored once:
- test metrics of its last checkpoint on the first ``--items`` items of ``test`` and
  ``test_unseen`` (the recipe's fixed splits: the same clips for every run, whatever its batch
  size or seed), by ``speechnorm evaluate``'s code (``speechnorm.scoring``);
- the **train/eval gap**: ||y_train - y_eval|| / ||y_eval|| between the model's output in train
  mode and in eval mode on the first ``test`` clip, enhanced inside a batch of 8 test items in
  train mode (a batch statistic depends on its neighbours). 0 means the trained function is the
  deployed one;
- no step times: the report usually runs beside the sweep, where times are not comparable;
  ``scripts/bench_train_step.py`` measures them in one quiet run.

The table gives, per setting and batch size, the mean ± standard deviation over seeds and the
number of seeds and clips; ``results/ablation.png`` draws validation SI-SDR against step for
every run.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from speechnorm.data.datamodule import EnhancementDataModule
from speechnorm.evaluate import _accepted, evaluate
from speechnorm.models.checkpoint import load_model

SPLITS = ("test", "test_unseen")
SHOWN = ("si_sdr", "pesq", "stoi")  # DNSMOS left out: it would take most of the scoring time
RUN_NAME = re.compile(r"^(?P<setting>.+)_b(?P<batch>\d+)_s(?P<seed>\d+)$")


@torch.no_grad()
def train_eval_gap(model, batch: torch.Tensor) -> float:
    in_eval = model.eval()(batch[:1])[0]
    in_train = model.train()(batch)[0]  # after: a training forward may move the running statistics
    model.eval()
    return float((in_train - in_eval).norm() / in_eval.norm())


def first_test_batch(data_hparams: dict) -> torch.Tensor:
    data = EnhancementDataModule(**_accepted(EnhancementDataModule, data_hparams))
    data.prepare_data()
    data.setup()
    items = [data.datasets["test"][i] for i in range(8)]
    mics = min(item[0].shape[0] for item in items)
    return torch.stack([item[0][:mics] for item in items])


def curve(run: Path) -> list[tuple[int, float]]:
    """(step, val SI-SDR) from the run's CSV log."""
    points = []
    for log in sorted(run.glob("version_*/metrics.csv")):
        with open(log) as f:
            for row in csv.DictReader(f):
                if row.get("val/si_sdr"):
                    points.append((int(row["step"]), float(row["val/si_sdr"])))
    return sorted(points)


def score_run(run: Path, items: int, clips: dict) -> dict | None:
    """The run's row (cached in run/report.json for its last checkpoint)."""
    match = RUN_NAME.match(run.name)
    checkpoints = sorted(run.glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    if match is None or not checkpoints or not (run / "DONE").exists():
        return None
    cache = run / "report.json"
    if cache.exists():
        row = json.loads(cache.read_text())
        row.pop("ms_per_step", None)  # written by earlier versions, timed beside the sweep
        if row.get("checkpoint") == checkpoints[-1].name and row.get("items") == items:
            return {**row, "run": run.name, "setting": match["setting"]}  # the folder names the setting (it may be renamed)
    model, hparams = load_model(checkpoints[-1])
    data_hparams = hparams["data"]
    key = json.dumps({k: v for k, v in data_hparams.items() if k not in ("batch_size", "num_workers")}, sort_keys=True)
    if key not in clips:  # the same 8 test items for every run with the same data
        clips[key] = first_test_batch(data_hparams)
    metrics = {}
    for split in SPLITS:
        with tempfile.TemporaryDirectory() as tmp:
            result = evaluate(checkpoints[-1], split=split, out=tmp, items=items, pictures=0, dnsmos=False)
        metrics.update({f"{split}/{k}": v for k, v in result["mean"].items()})
        metrics[f"{split}/clips"] = result["items"]
    row = {"run": run.name, "setting": match["setting"], "norm": hparams["norm"], "batch": int(match["batch"]),
           "seed": int(match["seed"]), "checkpoint": checkpoints[-1].name, "items": items,
           "steps": torch.load(checkpoints[-1], map_location="cpu", weights_only=False).get("global_step"),
           "train_eval_gap": train_eval_gap(model, clips[key]), **metrics}
    cache.write_text(json.dumps(row, indent=2))
    return row


def mean_std(values: list[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["batch"], row["setting"]), []).append(row)
    clips = {s: sorted({r[f"{s}/clips"] for r in rows}) for s in SPLITS}
    steps = sorted({r["steps"] for r in rows})
    lines = [f"Mean ± standard deviation over seeds; {'/'.join(map(str, clips['test']))} clips of `test` and "
             f"{'/'.join(map(str, clips['test_unseen']))} of `test_unseen` (the same clips for every run); "
             f"{'/'.join(map(str, steps))} training steps.", "",
             "| batch | setting | seeds | test SI-SDR | PESQ | STOI | unseen SI-SDR | PESQ | STOI "
             "| train/eval gap |", "|---:|---|---:|" + "---:|" * 7]
    for (batch, setting), group in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        cells = [mean_std([r[f"{s}/enhanced/{m}"] for r in group], 3 if m == "stoi" else 2) for s in SPLITS for m in SHOWN]
        gap = max(r["train_eval_gap"] for r in group)
        lines.append(f"| {batch} | {setting} | {len(group)} | " + " | ".join(cells) + f" | ≤ {gap:.1e} |")
    first = rows[0]
    noisy = [f"{first[f'{s}/noisy/{m}']:.3f}" if m == "stoi" else f"{first[f'{s}/noisy/{m}']:.2f}" for s in SPLITS for m in SHOWN]
    lines.append("| | noisy input | | " + " | ".join(noisy) + " | |")
    lines += ["", verdict(groups)]
    return "\n".join(lines) + "\n"


def verdict(groups: dict[tuple, list[dict]]) -> str:
    """Per batch size: the best setting on test SI-SDR, and which others are inside its spread."""
    out = []
    for batch in sorted({b for b, _ in groups}, reverse=True):
        scores = {s: [r["test/enhanced/si_sdr"] for r in g] for (b, s), g in groups.items() if b == batch}
        best = max(scores, key=lambda s: statistics.mean(scores[s]))
        spread = max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in scores.values())
        same = [s for s in scores if s != best and statistics.mean(scores[best]) - statistics.mean(scores[s]) <= spread]
        behind = [f"{s} ({statistics.mean(scores[s]) - statistics.mean(scores[best]):+.2f} dB)" for s in scores
                  if s != best and s not in same]
        out.append(f"- batch {batch}: best on test SI-SDR is **{best}** ({statistics.mean(scores[best]):.2f} dB); "
                   f"within the largest standard deviation over seeds ({spread:.2f} dB), i.e. no difference: "
                   f"{', '.join(same) or 'no other setting'}; behind it: {', '.join(behind) or 'no other setting'}.")
    return "\n".join(out)


def plot(runs: list[Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted({RUN_NAME.match(r.name)["setting"] for r in runs})
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(settings)}
    present = sorted({int(RUN_NAME.match(r.name)["batch"]) for r in runs}, reverse=True)
    fig, axes = plt.subplots(1, len(present), figsize=(6 * len(present), 4.5), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, batch in zip(axes, present):
        for run in runs:
            match = RUN_NAME.match(run.name)
            points = curve(run)
            if int(match["batch"]) != batch or not points:
                continue
            seed = int(match["seed"])
            ax.plot(*zip(*points), color=colors[match["setting"]], alpha=0.8, marker="o", markersize=3,
                    label=match["setting"] if seed == min(int(RUN_NAME.match(r.name)["seed"]) for r in runs) else None)
        ax.set_title(f"batch {batch}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation SI-SDR (dB)")
    handles, labels = axes[0].get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    fig.legend(by_label.values(), by_label.keys(), loc="lower center", ncol=len(by_label), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/norm_ablation")
    parser.add_argument("--out", default="results")
    parser.add_argument("--items", type=int, default=48, help="test items per split (the same for every run)")
    parser.add_argument("--watch", action="store_true", help="keep scoring runs as they finish (until ALLDONE)")
    parser.add_argument("--name", default="ablation", help="file stem of the results (OUT/NAME.{md,json,png})")
    args = parser.parse_args(argv)
    clips: dict = {}
    while True:
        runs = sorted(p for p in Path(args.runs).iterdir() if p.is_dir() and RUN_NAME.match(p.name))
        rows = []
        for run in runs:
            row = score_run(run, args.items, clips)
            if row is not None:
                rows.append(row)
                print(f"{run.name}: scored", flush=True)
        if not args.watch or (Path(args.runs) / "ALLDONE").exists():
            break
        time.sleep(60)
    if not rows:
        raise SystemExit(f"no finished runs in {args.runs}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(rows, indent=2))
    (out / f"{args.name}.md").write_text(table(rows))
    plot([r for r in runs if curve(r)], out / f"{args.name}.png")
    print((out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
