"""`speechnorm evaluate MODEL --split test`: metrics of a trained model against its noisy input.

MODEL is a Lightning checkpoint, a released model folder, or an exported ONNX step graph. A
checkpoint runs in PyTorch, and its recipe's data is rebuilt from the hyper-parameters stored in
it. An ONNX file (or a folder with ``--backend onnx``) runs in onnxruntime through the exported
offline graph; its data settings come from the ``card.json`` beside it (``training.data``,
written by ``scripts/release_model.py``). Every item of the split is enhanced. The command
writes ``metrics.json`` (per item and means), ``metrics.md`` (noisy vs enhanced) and spectrogram
PNGs (noisy reference mic / enhanced / clean target) of the first few items.

A personalized model is evaluated on its recipe's personalized items (each with competing talkers
and the target speaker's enrollment embedding): it gets each item's embedding, and the report adds
TSOS and the conditions by number of competing talkers. A plain model can be scored on the same
items with ``data_overrides={"personalize": {...}}`` (its embedding is then not used).
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import torch

from .data.datamodule import EnhancementDataModule
from .models.checkpoint import load_model, resolve_checkpoint
from .scoring import align, score_clip

METRICS = ("si_sdr", "pesq", "stoi", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
SPLITS = ("val", "test", "test_unseen")
BACKENDS = ("auto", "torch", "onnx")


def _accepted(cls, stored: dict) -> dict:
    """The stored hyper-parameters that ``cls`` takes (LightningCLI stores extra keys)."""
    parameters = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in stored.items() if k in parameters and k != "self"}


def mean(values: list[float]) -> float:
    finite = [v for v in values if v == v and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


class Runner:
    """Enhances one item (M, N) -> (N,), output delayed by the model's fixed delay, in either backend."""

    def __init__(self, path: str | Path, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        path = Path(path)
        if backend == "onnx" or path.suffix == ".onnx":
            self._load_onnx(path if path.suffix == ".onnx" else path / "model.onnx")
        else:
            self.onnx = None
            self.model, hparams = load_model(path)
            self.data_hparams = _accepted(EnhancementDataModule, hparams["data"])
            self.description = {**{k: hparams.get(k) for k in ("model", "norm", "size")}, "backend": "torch",
                                "path": str(resolve_checkpoint(path))}
            self.sample_rate, self.delay = self.model.sample_rate, self.model.delay_samples
            self.personalized = self.model.personalized

    def _load_onnx(self, onnx_file: Path) -> None:
        from .stream import OnnxModel

        if not onnx_file.is_file():
            raise FileNotFoundError(f"no exported model at {onnx_file}; run `speechnorm export` first")
        self.onnx = OnnxModel(onnx_file)
        card_path = onnx_file.with_name("card.json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        if "data" not in card.get("training", {}):
            raise ValueError(f"{card_path}: evaluating an ONNX file needs a card.json with training.data beside it")
        self.data_hparams = _accepted(EnhancementDataModule, card["training"]["data"])
        self.description = {**card.get("model", {}), "backend": "onnxruntime", "path": str(onnx_file)}
        self.sample_rate, self.delay = self.onnx.sample_rate, self.onnx.delay_samples
        self.personalized = self.onnx.speaker_dim > 0

    @torch.inference_mode()
    def __call__(self, noisy: torch.Tensor, speaker: torch.Tensor | None = None) -> torch.Tensor:
        """``speaker``: the target's embedding, used by a personalized model (and ignored by a plain one)."""
        speaker = speaker if self.personalized else None
        if self.onnx is not None:
            return torch.from_numpy(self.onnx.offline(noisy.numpy(), speaker=None if speaker is None else speaker.numpy()))
        return self.model(noisy[None], speaker=speaker)[0]



def evaluate(model: str | Path, split: str = "test", out: str | Path = "evaluation", items: int | None = None,
             pictures: int = 3, data_overrides: dict | None = None, backend: str = "auto", dnsmos: bool = True,
             gain_db: float = 0.0) -> dict:
    """Score ``model`` on ``items`` clips of ``split`` (by ``speechnorm.scoring.score_clip``).
    ``gain_db`` scales every clip (input and target) by that many dB first: the same clips at
    another input level, to measure robustness to level."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not -80.0 <= gain_db <= 40.0:
        raise ValueError(f"gain_db must lie in [-80, 40] dB, got {gain_db!r}")
    gain = 10.0 ** (gain_db / 20.0)
    runner = Runner(model, backend)
    data = EnhancementDataModule(**{**runner.data_hparams, **(data_overrides or {})})
    data.prepare_data()
    data.setup()
    dataset = data.datasets[split]
    count = min(items or len(dataset), len(dataset))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    personal = dataset.personalize is not None
    if runner.personalized and not personal:
        raise ValueError(f"{model} is personalized: it is evaluated on items with an enrolled speaker; its recipe's data "
                         "has no `personalize` settings (give data_overrides={'personalize': {...}})")
    for index in range(count):
        noisy, target, *speaker = dataset[index]
        if gain_db:
            noisy, target = noisy * gain, target * gain
        estimate = runner(noisy, *speaker)
        plan = dataset.plan(index)
        row = {"item": index, "mics": noisy.shape[0], "noise": plan["noise"], "t60": round(plan["t60"], 3),
               "t60_band": t60_band(plan["t60"]), "snr_db": round(plan["snr_db"], 2)}
        if personal:
            row.update(talkers=plan["interferers"], sir_db=round(plan["sir_db"], 2))
        row.update(score_clip(estimate, noisy, target, runner.sample_rate, runner.delay, with_dnsmos=dnsmos,
                              with_tsos=personal))
        rows.append(row)
        if index < pictures:
            enhanced, aligned_target = align(estimate, target, runner.delay)
            spectrograms(out / f"{split}_{index:03d}.png", noisy[0, : aligned_target.shape[-1]], enhanced, aligned_target,
                         runner.sample_rate)
    shown = METRICS if dnsmos else METRICS[:3]  # dnsmos=False: SI-SDR, PESQ, STOI (DNSMOS costs the most)
    shown = shown + ("tsos",) if personal else shown
    summary = {f"{who}/{m}": mean([r[f"{who}/{m}"] for r in rows]) for who in ("noisy", "enhanced") for m in shown}
    result = {"checkpoint": runner.description["path"], "split": split, "items": count, "gain_db": gain_db,
              "metrics": list(shown),
              "model": runner.description, "mean": summary, "per_condition": per_condition(rows, metrics=shown),
              "per_item": rows}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "metrics.md").write_text(markdown_table(result))
    return result


T60_BANDS = ((0.0, 0.4, "T60<0.4s"), (0.4, 0.7, "T60 0.4-0.7s"), (0.7, 99.0, "T60>=0.7s"))


def t60_band(t60: float) -> str:
    return next(name for low, high, name in T60_BANDS if low <= t60 < high)


def per_condition(rows: list[dict], systems: tuple[str, ...] = ("noisy", "enhanced"),
                  metrics: tuple[str, ...] = METRICS) -> list[dict]:
    """Mean scores per noise kind, per T60 band, per mic count, and per noise kind x T60 band x mics
    (a mean over all clips can hide a condition where the model does nothing); per number of
    competing talkers too when rows hold ``talkers`` (personalized items). Rows hold ``noise``,
    ``t60_band``, ``mics`` and ``{system}/{metric}`` scores."""
    groupings = {"noise": ("noise",), "T60": ("t60_band",), "mics": ("mics",),
                 "noise x T60 x mics": ("noise", "t60_band", "mics")}
    if rows and "talkers" in rows[0]:
        groupings = {"talkers": ("talkers",), **groupings}
    out = []
    for grouping, keys in groupings.items():
        groups: dict[tuple, list[dict]] = {}
        for row in rows:
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)
        for values, members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
            out.append({"grouping": grouping, "condition": " / ".join(map(str, values)), "clips": len(members),
                        **{f"{who}/{m}": mean([r[f"{who}/{m}"] for r in members])
                           for who in systems for m in metrics}})
    return out


def markdown_table(result: dict) -> str:
    mean_ = result["mean"]
    metrics = result.get("metrics", METRICS)
    lines = [f"Split `{result['split']}`, {result['items']} items, model `{result['model']['model']}` "
             f"(norm `{result['model']['norm']}`, size `{result['model']['size']}`)", "",
             "| metric | noisy (mic 0) | enhanced | change |", "|---|---:|---:|---:|"]
    for metric in metrics:
        noisy, enhanced = mean_[f"noisy/{metric}"], mean_[f"enhanced/{metric}"]
        lines.append(f"| {metric} | {noisy:.3f} | {enhanced:.3f} | {enhanced - noisy:+.3f} |")
    if result.get("per_condition"):
        lines += ["", "Per condition (enhanced, and its change over noisy mic 0):", "",
                  "| grouping | condition | clips | " + " | ".join(metrics) + " |",
                  "|---|---|---:|" + "---:|" * len(metrics)]
        for row in result["per_condition"]:
            cells = [f"{row[f'enhanced/{m}']:.2f} ({row[f'enhanced/{m}'] - row[f'noisy/{m}']:+.2f})" for m in metrics]
            lines.append(f"| {row['grouping']} | {row['condition']} | {row['clips']} | " + " | ".join(cells) + " |")
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
