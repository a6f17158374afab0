"""The normalization ablation's table: test metrics, train/inference asymmetry and time per step.

    recipes/norm_ablation/run.sh --test false     # trains every run (NORMS="online batch" to choose)
    python scripts/ablation_report.py --items 16  # evaluates runs/norm_ablation/*, writes results/ablation.{md,json}

Per run (`<norm>_b<batch>`):
- test metrics of its last checkpoint on the first ``--items`` items of `test` and `test_unseen`
  (the recipe's fixed splits), by `speechnorm evaluate`'s code, the same for every run;
- the **train/eval gap**: the relative difference ||y_train - y_eval|| / ||y_eval|| between the
  model's output in train mode and in eval mode, on the same clip. The clip is the first
  `test` item, enhanced inside a batch of 8 test items in train mode, since a batch statistic
  depends on its neighbours. 0 means the trained function is the deployed one;
- the **wall time per training step**: forward, loss, backward and AdamW at the run's batch size,
  on the recipe's 2 s, 4-mic items, measured here (median of 5, after one warm-up step).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from speechnorm.data.datamodule import EnhancementDataModule
from speechnorm.evaluate import _accepted, evaluate
from speechnorm.models.checkpoint import load_model
from speechnorm.models.speed import median_seconds

SPLITS = ("test", "test_unseen")
SHOWN = ("si_sdr", "pesq", "stoi", "dnsmos_ovrl")


@torch.no_grad()
def train_eval_gap(model, batch: torch.Tensor) -> float:
    in_eval = model.eval()(batch[:1])[0]
    in_train = model.train()(batch)[0]  # after: a training forward may move the running statistics
    model.eval()
    return float((in_train - in_eval).norm() / in_eval.norm())


def step_seconds(model, batch_size: int) -> float:
    model = model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    audio = 0.1 * torch.randn(batch_size, 4, 32000)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = (model(audio) - audio[:, 0]).square().mean()
        loss.backward()
        optimizer.step()

    return median_seconds(step, torch.device("cpu"), repeats=5, warmup=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/norm_ablation")
    parser.add_argument("--out", default="results")
    parser.add_argument("--items", type=int, default=16, help="test items per split")
    args = parser.parse_args(argv)
    rows, clip = [], None
    for run in sorted(p for p in Path(args.runs).iterdir() if p.is_dir()):
        checkpoints = sorted(run.glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not checkpoints:
            continue
        model, hparams = load_model(checkpoints[-1])
        data_hparams = hparams["data"]
        if clip is None:  # the same 8 test items for every run (identical data settings)
            data = EnhancementDataModule(**_accepted(EnhancementDataModule, data_hparams))
            data.prepare_data()
            data.setup()
            items = [data.datasets["test"][i] for i in range(8)]
            mics = min(item[0].shape[0] for item in items)
            clip = torch.stack([item[0][:mics] for item in items])
        metrics = {}
        for split in SPLITS:
            with tempfile.TemporaryDirectory() as tmp:
                result = evaluate(checkpoints[-1], split=split, out=tmp, items=args.items, pictures=0)
            metrics.update({f"{split}/{k}": v for k, v in result["mean"].items()})
        norm, batch = hparams["norm"], data_hparams.get("batch_size")
        rows.append({"run": run.name, "norm": norm, "batch": batch, "steps": torch.load(
            checkpoints[-1], map_location="cpu", weights_only=False).get("global_step"),
            "train_eval_gap": train_eval_gap(model, clip), "ms_per_step": 1e3 * step_seconds(model, batch),
            **{f"{s}/{m}": metrics.get(f"{s}/enhanced/{m}", float("nan")) for s in SPLITS for m in SHOWN},
            **{f"{s}/noisy/{m}": metrics.get(f"{s}/noisy/{m}", float("nan")) for s in SPLITS for m in SHOWN}})
        print(f"{run.name}: done", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))
    lines = ["| run | norm | batch | steps | test SI-SDR | PESQ | STOI | OVRL | unseen SI-SDR | PESQ | STOI | OVRL | "
             "train/eval gap | ms/step |", "|---|---|---:|---:|" + "---:|" * 10]
    for r in rows:
        cells = [f"{r[f'{s}/{m}']:.2f}" if m != "stoi" else f"{r[f'{s}/{m}']:.3f}" for s in SPLITS for m in SHOWN]
        lines.append(f"| {r['run']} | {r['norm']} | {r['batch']} | {r['steps']} | " + " | ".join(cells)
                     + f" | {r['train_eval_gap']:.2e} | {r['ms_per_step']:.0f} |")
    if rows:
        first = rows[0]
        noisy = [f"{first[f'{s}/noisy/{m}']:.2f}" if m != "stoi" else f"{first[f'{s}/noisy/{m}']:.3f}" for s in SPLITS for m in SHOWN]
        lines.append("| noisy input | | | | " + " | ".join(noisy) + " | | |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print((out / "ablation.md").read_text())


if __name__ == "__main__":
    main()
