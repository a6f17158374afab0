"""Package a trained checkpoint as a released model: models/<name>/{model.ckpt, card.json, README.md}.

    python scripts/release_model.py runs/array_agnostic/checkpoints/<best>.ckpt --name tac_gru_online_small

Keeps the weights and hyper-parameters (no optimizer state), evaluates on the test split (seen
arrays) and on test_unseen (held-out arrays) with `speechnorm evaluate`'s code, and writes the
model card from those measurements.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from speechnorm.evaluate import METRICS, evaluate, markdown_table
from speechnorm.models import count_parameters

KEEP = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "pytorch-lightning_version", "global_step", "epoch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", default="models")
    parser.add_argument("--recipe", default="recipes/array_agnostic/conf.yaml")
    args = parser.parse_args(argv)
    folder = Path(args.out) / args.name
    folder.mkdir(parents=True, exist_ok=True)
    full = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    torch.save({k: full[k] for k in KEEP if k in full}, folder / "model.ckpt")

    results = {}
    for split in ("test", "test_unseen"):
        results[split] = evaluate(folder, split=split, out=folder / "evaluation" / split, pictures=2)
    task_hp = results["test"]["model"]
    from speechnorm.evaluate import load

    task, data_hp = load(folder)
    model = task.model
    card = {
        "name": args.name,
        "model": {k: task_hp[k] for k in ("model", "norm", "size", "model_config") if k in task_hp},
        "parameters": count_parameters(model),
        "sample_rate": model.sample_rate,
        "hop_samples": model.hop,
        "window_samples": model.stft.n_fft,
        "delay_samples": model.delay_samples,
        "latency_ms": model.latency_ms,
        "mics": "any M >= 1, any geometry; mic 0 is the reference",
        "training": {"recipe": args.recipe, "steps": full.get("global_step"), "data": data_hp},
        "metrics": {split: results[split]["mean"] for split in results},
        "items": {split: results[split]["items"] for split in results},
        "measured_with": f"python scripts/release_model.py {args.checkpoint} --name {args.name}",
    }
    (folder / "card.json").write_text(json.dumps(card, indent=2, default=str))
    (folder / "README.md").write_text(model_card(card, results))
    shutil.rmtree(folder / "evaluation" / "test" / "__pycache__", ignore_errors=True)
    print((folder / "README.md").read_text())


def model_card(card: dict, results: dict) -> str:
    data = card["training"]["data"]
    lines = [
        f"# {card['name']}",
        "",
        f"`{card['model']['model']}` ({card['model']['size']}, {card['parameters']:,} parameters) with "
        f"`{card['model']['norm']}` normalization, trained by `{card['training']['recipe']}` for "
        f"{card['training']['steps']} steps on CPU. 16 kHz, any number of mics in any geometry (mic 0 is the "
        f"reference), {card['hop_samples']}-sample hop, {card['latency_ms']:.0f} ms algorithmic latency.",
        "",
        "## Data",
        "",
        f"Simulated rooms (pyroomacoustics, T60 {data.get('t60')}, SNR {data.get('snr_db')} dB, 1–3 noise "
        f"sources) with the built-in synthetic corpus: espeak-ng speech and generated noises "
        f"(white/pink/brown, hum, clicks, babble), {data.get('train_items')} training items of "
        f"{data.get('seconds')} s. Training arrays: circular or linear, 2–6 mics. `test_unseen`: clusters "
        "and 7–8-mic circles never seen in training.",
        "",
        "## Measured",
        "",
    ]
    for split, result in results.items():
        lines += [f"### {split}", "", markdown_table(result)]
    lines += [
        "Metrics: SI-SDR (dB), wide-band PESQ, STOI, DNSMOS P.835 (SIG/BAK/OVRL, `speechmos`), on the target "
        "(direct path + 50 ms of early reflections at mic 0) against the noisy mic 0 and the enhanced output.",
        "",
        "Reproduce:",
        "",
        "```",
        f"speechnorm train --config {card['training']['recipe']}",
        card["measured_with"],
        f"speechnorm evaluate models/{card['name']} --split test_unseen",
        "```",
        "",
        "Limits: trained only on synthetic speech and noises, so expect less on real recordings. "
        "Late reverberation is truncated in the simulation (image-source order 12).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
