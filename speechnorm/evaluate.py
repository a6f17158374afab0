"""`speechnorm evaluate CKPT --split test`: metrics of a trained model against its noisy input.

Loads a Lightning checkpoint (or a released model folder holding ``model.ckpt``), rebuilds the
recipe's data from the hyper-parameters stored in it, enhances every item of the split and
writes ``metrics.json`` (per item and means), ``metrics.md`` (noisy vs enhanced) and spectrogram
PNGs (noisy reference mic / enhanced / clean target) of the first few items.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch

from .data.datamodule import EnhancementDataModule
from .task import EnhancementTask, dnsmos, quality_metrics

METRICS = ("si_sdr", "pesq", "stoi", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
SPLITS = ("val", "test", "test_unseen")


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "model.ckpt"
    if path.suffix == ".onnx":
        raise ValueError(f"{path}: evaluating an ONNX file needs the ONNX export, which is not built yet; give a .ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load(path: str | Path) -> tuple[EnhancementTask, dict]:
    """The task (in eval mode) and the data module's hyper-parameters stored with it, from one read."""
    checkpoint = torch.load(resolve_checkpoint(path), map_location="cpu", weights_only=False)
    task = EnhancementTask(**_accepted(EnhancementTask, checkpoint.get("hyper_parameters", {})))
    task.load_state_dict(checkpoint["state_dict"])
    return task.eval(), _accepted(EnhancementDataModule, checkpoint.get("datamodule_hyper_parameters", {}))


def _accepted(cls, stored: dict) -> dict:
    """The stored hyper-parameters that ``cls`` takes (LightningCLI stores extra keys)."""
    parameters = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in stored.items() if k in parameters and k != "self"}


def mean(values: list[float]) -> float:
    finite = [v for v in values if v == v and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


@torch.inference_mode()
def evaluate(checkpoint: str | Path, split: str = "test", out: str | Path = "evaluation", items: int | None = None,
             pictures: int = 3, data_overrides: dict | None = None) -> dict:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    task, data_hparams = load(checkpoint)
    data = EnhancementDataModule(**{**data_hparams, **(data_overrides or {})})
    data.prepare_data()
    data.setup()
    dataset = data.datasets[split]
    count = min(items or len(dataset), len(dataset))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        noisy, target = dataset[index]
        enhanced, aligned_target = task.aligned(task(noisy[None])[0], target)
        reference = noisy[0, : aligned_target.shape[-1]]
        row = {"item": index, "mics": noisy.shape[0]}
        for who, signal in (("noisy", reference), ("enhanced", enhanced)):
            scores = {**quality_metrics(signal, aligned_target, task.model.sample_rate), **dnsmos(signal, task.model.sample_rate)}
            row.update({f"{who}/{k}": v for k, v in scores.items()})
        rows.append(row)
        if index < pictures:
            spectrograms(out / f"{split}_{index:03d}.png", reference, enhanced, aligned_target, task.model.sample_rate)
    summary = {f"{who}/{m}": mean([r[f"{who}/{m}"] for r in rows]) for who in ("noisy", "enhanced") for m in METRICS}
    result = {"checkpoint": str(resolve_checkpoint(checkpoint)), "split": split, "items": count,
              "model": dict(task.hparams), "mean": summary, "per_item": rows}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "metrics.md").write_text(markdown_table(result))
    return result


def markdown_table(result: dict) -> str:
    mean_ = result["mean"]
    lines = [f"Split `{result['split']}`, {result['items']} items, model `{result['model']['model']}` "
             f"(norm `{result['model']['norm']}`, size `{result['model']['size']}`)", "",
             "| metric | noisy (mic 0) | enhanced | change |", "|---|---:|---:|---:|"]
    for metric in METRICS:
        noisy, enhanced = mean_[f"noisy/{metric}"], mean_[f"enhanced/{metric}"]
        lines.append(f"| {metric} | {noisy:.3f} | {enhanced:.3f} | {enhanced - noisy:+.3f} |")
    return "\n".join(lines) + "\n"


def spectrograms(path: Path, noisy, enhanced, clean, sample_rate: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, (title, signal) in zip(axes, (("noisy (mic 0)", noisy), ("enhanced", enhanced), ("clean target", clean))):
        ax.specgram(signal.numpy(), NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma", vmin=-140)
        ax.set_title(title)
        ax.set_ylabel("Hz")
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
