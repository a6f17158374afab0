"""Package a trained checkpoint as a released model: models/<name>/{model.ckpt, model.onnx,
model_offline.onnx, card.json, README.md}.

    python scripts/release_model.py runs/array_agnostic/checkpoints/<best>.ckpt --name tac_gru_online_small

Keeps the weights and hyper-parameters (no optimizer state), evaluates on the test split (seen
arrays) and on test_unseen (held-out arrays) with `speechnorm evaluate`'s code, exports the
verified ONNX graphs (`speechnorm export`), enhances the bundled real-speech example through
them (`speechnorm enhance`) and scores it, and writes the model card from those measurements.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import tempfile
from pathlib import Path

import torch

from speechnorm.assets import ASSETS, EXAMPLE
from speechnorm.enhance import enhance_file, score_against
from speechnorm.evaluate import METRICS, evaluate, markdown_table
from speechnorm.export import export_model
from speechnorm.export.card import write_card
from speechnorm.models import count_parameters
from speechnorm.models.checkpoint import NORM_DEFAULTS_KEY, load_model

# what a released checkpoint keeps: no optimizer state; the normalizer defaults it was trained under
# (without them a bare "online" would load as the oldest defaults: ``speechnorm.norm.pin_defaults``)
KEEP = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "pytorch-lightning_version", "global_step", "epoch",
        NORM_DEFAULTS_KEY)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", default="models")
    parser.add_argument("--recipe", default="recipes/array_agnostic/conf.yaml")
    parser.add_argument("--logs", default=None, help="the run's CSV log folder (e.g. runs/real_rooms/csv): "
                                                     "its training curve is drawn into training_curve.png")
    parser.add_argument("--stage", action="append", default=[],
                        help="how the checkpoint came to be, one training stage each (repeatable, in order): a model "
                             "warm-started from another, or data changed between runs; listed in the card")
    args = parser.parse_args(argv)
    folder = Path(args.out) / args.name
    folder.mkdir(parents=True, exist_ok=True)
    full = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    torch.save({k: full[k] for k in KEEP if k in full}, folder / "model.ckpt")

    results = {}
    for split in ("test", "test_unseen"):
        results[split] = evaluate(folder, split=split, out=folder / "evaluation" / split, pictures=2)
    task_hp = results["test"]["model"]
    model, hparams = load_model(folder)
    data_hp = hparams["data"]
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
        "training": {"recipe": args.recipe, "steps": full.get("global_step"), "data": data_hp,
                     **({"stages": args.stage} if args.stage else {})},
        "metrics": {split: results[split]["mean"] for split in results},
        "items": {split: results[split]["items"] for split in results},
        "measured_with": "python scripts/release_model.py " + " ".join(shlex.quote(a) for a in (
            [args.checkpoint, "--name", args.name, "--recipe", args.recipe] + (["--logs", args.logs] if args.logs else [])
            + [x for stage in args.stage for x in ("--stage", stage)])),
    }
    write_card(folder, card)
    card = export_model(folder, folder)  # adds the verified ONNX graphs and the card's "onnx" section
    if model.personalized:  # the example has no enrollment of its own speaker apart from itself: not scored
        card.pop("example", None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            enhance_file(EXAMPLE, Path(tmp) / "enhanced.wav", model=folder, backend="onnx")
            card["example"] = {"file": "speechnorm/assets/example_4mic.flac",
                               "reference": "speechnorm/assets/example_clean.flac",
                               **score_against(EXAMPLE, Path(tmp) / "enhanced.wav", ASSETS / "example_clean.flac")}
    if args.logs:
        training_curve(Path(args.logs), folder / "training_curve.png")
    card["corpus"] = corpus_sources(card["training"]["data"])
    card = write_card(folder, card)
    (folder / "README.md").write_text(model_card(card, results))
    shutil.rmtree(folder / "evaluation" / "test" / "__pycache__", ignore_errors=True)
    print((folder / "README.md").read_text())


def training_curve(logs: Path, png: Path) -> None:
    """Training loss (smoothed) and validation SI-SDR against steps, from every CSV log under ``logs``
    (a resumed run writes a new version folder; steps continue)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = {}, {}
    for path in sorted(logs.glob("version_*/metrics.csv")):
        for row in csv.DictReader(open(path)):
            if row.get("train/loss"):
                train[int(row["step"])] = float(row["train/loss"])
            if row.get("val/si_sdr"):
                val[int(row["step"])] = float(row["val/si_sdr"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = sorted(train)
    losses = [train[s] for s in steps]
    smooth = [sum(losses[max(0, i - 9) : i + 1]) / len(losses[max(0, i - 9) : i + 1]) for i in range(len(losses))]
    left.plot(steps, losses, alpha=0.3)
    left.plot(steps, smooth)
    left.set(title="training loss", xlabel="step")
    right.plot(sorted(val), [val[s] for s in sorted(val)], marker="o")
    right.set(title="validation SI-SDR (dB)", xlabel="step")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def corpus_sources(data: dict) -> list[dict]:
    """Per source package of a ``speechnorm data`` corpus: version, licence, hours and speakers per split."""
    from speechnorm.data.corpus import read_manifest

    sources = {}
    for folder in (data.get("clean_dir"), data.get("noise_dir")):
        for row in (read_manifest(folder) or {}).values() if folder else ():
            entry = sources.setdefault((row["kind"], row["package"]), {
                "kind": row["kind"], "package": row["package"], "version": row["version"], "licence": row["licence"],
                "hours": {}, "speakers": {}})
            entry["hours"][row["split"]] = entry["hours"].get(row["split"], 0.0) + float(row["seconds"]) / 3600
            if row["speaker"]:
                entry["speakers"].setdefault(row["split"], set()).add(row["speaker"])
    for entry in sources.values():
        entry["hours"] = {k: round(v, 3) for k, v in entry["hours"].items()}
        entry["speakers"] = {k: sorted(v) for k, v in entry["speakers"].items()}
    return list(sources.values())


def data_paragraph(data: dict) -> str:
    if data.get("clean_dir"):
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in (data.get("noise_kinds") or {"noise": 1.0}).items())
        return (f"Real recorded speech and noise from Debian packages (`speechnorm data`, table below; whole speakers "
                f"held out for val/test), plus espeak-ng voices (and Festival voices where the table lists `festvox-*`)"
                + (f"; personalized items: {(data.get('personalize') or {}).get('interferers')} competing talkers at SIR "
                   f"{(data.get('personalize') or {}).get('sir_db')} dB, the target enrolled from another of its utterances"
                   + (f", every training voice also played {data['personalize']['voice_speeds']}× as fast (pseudo-speakers)"
                      if (data.get("personalize") or {}).get("voice_speeds") else "") if data.get("personalize") else "")
                + ", in simulated rooms with "
                f"{'their full late reverberation' if data.get('late_reverb') else 'order-12 image sources'}: "
                f"T60 {data.get('t60')} s, SNR {data.get('snr_db')} dB, speaker {data.get('distance')} m from the array, "
                f"±{data.get('mic_gain_db')} dB mic gains, sensor noise {data.get('sensor_snr_db')} dB down; noise kinds "
                f"{kinds}. {data.get('train_items')} training items of {data.get('seconds')} s. Training arrays: "
                "circular or linear, 2–6 mics. `test_unseen`: clusters and 7–8-mic circles never seen in training.")
    return (f"Simulated rooms (pyroomacoustics, T60 {data.get('t60')}, SNR {data.get('snr_db')} dB, 1–3 noise "
            f"sources) with the built-in corpus: espeak-ng speech"
            + (", 15 s of real conversational speech (`speechnorm/assets/real_speech`, after its held-out first 14.5 s; "
               "speed-perturbed ×0.9/×1.1)" if data.get("real_speech") else "")
            + f" and generated noises (white/pink/brown, hum, clicks, babble), {data.get('train_items')} training items of "
            f"{data.get('seconds')} s. Training arrays: circular or linear, 2–6 mics. `test_unseen`: clusters "
            "and 7–8-mic circles never seen in training.")


def limits_paragraph(data: dict, corpus: list[dict] | None = None) -> str:
    if data.get("clean_dir"):
        recorded = sorted({who for src in corpus or () if src["kind"] == "speech" and src["package"] != "speechnorm"
                           and not src["package"].startswith("festvox-") for who in src["speakers"].get("train", ())})
        festival = sum(len(src["speakers"].get("train", ())) for src in corpus or () if src["package"].startswith("festvox-"))
        return (f"Limits: a few hours of real speech from {len(recorded) or 'a few'} recorded training speaker labels "
                "(game dialogue, telephone prompts)"
                + (f" plus {festival} Festival voices, each built from one person's recordings" if festival else "")
                + ", and CPU-scale training; simulated rooms, not recorded ones.")
    return ("Limits: trained mostly on synthetic speech (with a little real speech) and generated noises, so expect less "
            "on real recordings. Late reverberation is truncated in the simulation (image-source order 12).")


def model_card(card: dict, results: dict) -> str:
    data = card["training"]["data"]
    personal = bool((card.get("onnx") or {}).get("speaker"))
    lines = [
        f"# {card['name']}",
        "",
        f"`{card['model']['model']}` ({card['model']['size']}, {card['parameters']:,} parameters) with "
        f"`{card['model']['norm']}` normalization, trained by `{card['training']['recipe']}` for "
        f"{card['training']['steps']} steps on CPU" + (" (its last stage; all of them below)" if card["training"].get("stages") else "")
        + f". 16 kHz, any number of mics in any geometry (mic 0 is the "
        f"reference), {card['hop_samples']}-sample hop, {card['latency_ms']:.0f} ms algorithmic latency.",
        "",
    ]
    if card["training"].get("stages"):
        lines += ["Training stages, in order:", ""] + [f"{k}. {stage}" for k, stage in enumerate(card["training"]["stages"], 1)] + [""]
    lines += [
        "## Data",
        "",
        data_paragraph(data),
        "",
    ]
    if card.get("corpus"):
        lines += ["Corpus (`speechnorm data`; the audio is fetched from these packages, never shipped):", "",
                  "| kind | package | version | licence | hours train / val / test | speakers train / val / test |",
                  "|---|---|---|---|---|---|"]
        for src in card["corpus"]:
            hours = " / ".join(f"{src['hours'].get(s, 0):.2f}" for s in ("train", "val", "test"))
            speakers = " / ".join(", ".join(src["speakers"].get(s, [])) or "-" for s in ("train", "val", "test"))
            lines.append(f"| {src['kind']} | `{src['package']}` | {src['version']} | {src['licence']} | {hours} | "
                         f"{speakers if src['kind'] == 'speech' else '-'} |")
        lines.append("")
    if (Path("models") / card["name"] / "training_curve.png").exists():
        lines += ["![training curve](training_curve.png)", ""]
    lines += [
        "## Use",
        "",
        "```",
        f"speechnorm enhance noisy.wav -o enhanced.wav --model models/{card['name']}"
        + (" --enroll me.wav   # 2-30 s of the target speaker alone" if personal else "   # any rate, 1-16 channels"),
        f"speechnorm serve --model models/{card['name']}                               # WebSocket, serve/PROTOCOL.md",
        "```",
        "",
        "`model.onnx` is the streaming step: `audio` (mics, 160) and the state tensors in, `enhanced` (160,) and "
        "the new state out; the initial state is in its metadata, the tensors are listed in `card.json` (`onnx`). "
        "`model_offline.onnx` takes a whole utterance (mics, samples). Both were checked against PyTorch in "
        "onnxruntime at export (`onnx.verification` in the card).",
        "",
    ]
    if personal:
        lines += ["**Personalized:** it keeps the enrolled speaker and removes noise and other talkers. The target "
                  "speaker's embedding (`speechnorm enroll me.wav -o me.npy`, 256 values) enters the step graph as "
                  "the state `state.speaker.embedding` (1, 256), set when a stream opens, and the offline graph as "
                  "the input `speaker` (`onnx.speaker` in the card); `speechnorm serve` takes it in `start` "
                  "(protocol 2). Its test items add 0-2 competing talkers; TSOS is the fraction of the target's "
                  "speech frames suppressed by more than 10 dB (README).", ""]
    lines += [
        "## Measured",
        "",
    ]
    for split, result in results.items():
        lines += [f"### {split}", "", markdown_table(result)]
    example = card.get("example")
    if example:
        lines += ["### Real recorded speech: the bundled example", "",
                  f"`{example['file']}`: 8 s of the held-out start of the real conversation in a simulated room "
                  "(4-mic circle, pink noise and hum at 5 dB SNR), enhanced by `speechnorm enhance` through the ONNX "
                  "step graph.", "", "| metric | noisy (mic 0) | enhanced |", "|---|---:|---:|"]
        lines += [f"| {m} | {example['noisy'][m]:.3f} | {example['enhanced'][m]:.3f} |" for m in ("si_sdr", "pesq", "stoi")]
        lines += [""]
    lines += [
        "Metrics: SI-SDR (dB), wide-band PESQ, STOI, DNSMOS P.835 (SIG/BAK/OVRL, `speechmos`), on the target "
        "(direct path + 50 ms of early reflections at mic 0) against the noisy mic 0 and the enhanced output.",
        "",
        "Reproduce:",
        "",
        "```",
        f"speechnorm train --config {card['training']['recipe']}"
        + ("   # one run; this checkpoint came from the training stages above" if card["training"].get("stages") else ""),
        card["measured_with"],
        f"speechnorm evaluate models/{card['name']} --split test_unseen",
        "```",
        "",
        limits_paragraph(data, card.get("corpus")),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
