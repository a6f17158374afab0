"""The real-speech evaluation set: every system on the same clips, from one scoring path, per condition.

    speechnorm data                                          # the corpus (once)
    python scripts/evaluate_real.py --model models/tac_gru_online_small_v2 --model runs/real_rooms/checkpoints/last.ckpt
    python scripts/evaluate_real.py --items 12 --out /tmp/real   # quicker

Clips: the ``test_unseen`` split of ``recipes/real_rooms/conf.yaml`` (48 clips; ``--splits test
test_unseen`` adds the seen array types): arrays outside the training ranges (clusters of 2-8
mics, 7-8-mic circles), speakers no training split hears (``speechnorm data``
holds them out), every noise kind (real recorded, generated, babble of 3-8 real talkers, one
competing talker), T60 0.2-1.0 s with the full late reverberation, SNR -5..10 dB (a competing
talker 0..10 dB). The clips are a function of the recipe's seed only.

Systems: the noisy reference mic, noisereduce, RNNoise and MVDR (as in ``evaluate_peers.py``),
GTCRN (a small neural enhancer trained on DNS-Challenge data; its streaming ONNX graph is read
from ``../shared/peers/gtcrn`` and skipped when absent), and each ``--model`` (a model folder,
an exported .onnx or a checkpoint). Metrics: SI-SDR, PESQ-wb, STOI, DNSMOS (one function,
``speechnorm.task``), against the target (direct path + 50 ms at mic 0). Writes
``OUT/real_eval.{json,md,png}``: the mean per split, and per noise kind, T60 band and mic count.

Personalized evaluation: ``--config recipes/personalized/conf.yaml --name personalized_eval``. The
clips then add 0-2 competing talkers and carry the target's enrollment embedding, which
personalized models get (plain models and peers run as always); the report adds TSOS and the
conditions by number of competing talkers; ``--talkers 1 --sir-db 0`` gives every clip exactly one
competing talker at 0 dB (``--talkers 0``: noise only). ``--wrong-enrollment`` adds each personalized model
enrolled with another speaker (the split's least similar embedding): a model that follows its
enrollment loses the target there. ``--clean-targets 2.8``: the clean-target set, whose test
utterances are only those the speech screen scored at a dry DNSMOS OVRL of 2.8 or more. ``--target-row`` scores the target itself beside the systems:
its DNSMOS is what a perfect system would get on these clips.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_peers import RNNoise, grouped_bars, mvdr_peer, noisereduce_peer, ours, score  # noqa: E402

from speechnorm.data.datamodule import EnhancementDataModule  # noqa: E402
from speechnorm.evaluate import METRICS, Runner, mean, per_condition, t60_band  # noqa: E402

RATE = 16_000
TARGET = "target (ceiling)"
GTCRN = Path(__file__).resolve().parents[2] / "shared" / "peers" / "gtcrn" / "gtcrn_simple.onnx"


class Gtcrn:
    """GTCRN's streaming graph, framed as its README says: 512-point FFT, hop 256, sqrt-Hann."""

    N_FFT, HOP = 512, 256

    def __init__(self, path: Path = GTCRN):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.window = np.sqrt(np.hanning(self.N_FFT + 1)[:-1]).astype(np.float32)  # periodic Hann, square root

    def __call__(self, noisy: np.ndarray) -> np.ndarray:
        x = noisy[0]
        n = x.size
        padded = np.concatenate([np.zeros(self.HOP, np.float32), x, np.zeros(self.N_FFT, np.float32)])
        caches = {"conv_cache": np.zeros((2, 1, 16, 16, 33), np.float32), "tra_cache": np.zeros((2, 3, 1, 1, 16), np.float32),
                  "inter_cache": np.zeros((2, 1, 33, 16), np.float32)}
        out = np.zeros(padded.size + self.N_FFT, np.float32)
        for t in range((n + self.HOP - 1) // self.HOP + 1):
            frame = padded[t * self.HOP : t * self.HOP + self.N_FFT]
            spectrum = np.fft.rfft(frame * self.window)
            mix = np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)[None, :, None, :]
            enh, *new = self.session.run(None, {"mix": mix, **caches})
            caches = dict(zip(caches, new))
            out[t * self.HOP : t * self.HOP + self.N_FFT] += np.fft.irfft(enh[0, :, 0, 0] + 1j * enh[0, :, 0, 1]) * self.window
        return out[self.HOP : self.HOP + n]  # frame t covers [256 t - 256, 256 t + 256): undo the history offset


class NotPersonalized(ValueError):
    """--talkers or --sir-db on a recipe whose clips have no competing talkers."""


def clips(config: str, items: int | None, splits: list[str], talkers: int | None = None, sir_db: float | None = None,
          min_dry_ovrl: float | None = None):
    """(split, index, plan, noisy (M, N), clean (N,), speaker (D,) or None) of the recipe's test splits.
    ``talkers``, ``sir_db``: a personalized recipe's clips with exactly that many competing talkers,
    at exactly that SIR. Each clip keeps its conditions (noise kind, SNR, T60, mic count), target
    utterance, enrollment and noise; its room and array are drawn after the talkers, so they differ
    where the number of talkers does."""
    data_args = yaml.safe_load(Path(config).read_text())["data"]
    if talkers is not None or sir_db is not None:
        if not data_args.get("personalize"):
            raise NotPersonalized(f"--talkers and --sir-db set competing talkers; {config} is not a personalized recipe "
                                  "(its data has no `personalize`)")
        personalize = dict(data_args["personalize"])
        if talkers is not None:
            personalize["interferers"] = [talkers, talkers]
        if sir_db is not None:
            personalize["sir_db"] = [sir_db, sir_db]
        data_args = {**data_args, "personalize": personalize}
    if min_dry_ovrl is not None:
        data_args = {**data_args, "test_min_dry_ovrl": min_dry_ovrl}
    data = EnhancementDataModule(**data_args)
    data.setup()
    for split in splits:
        dataset = data.datasets[split]
        for index in range(min(items or len(dataset), len(dataset))):
            noisy, target, *speaker = dataset[index]
            yield split, index, dataset.plan(index), noisy.numpy(), target.numpy(), speaker[0].numpy() if speaker else None


def least_similar(embedding: np.ndarray, candidates: list[np.ndarray]) -> np.ndarray:
    """Of ``candidates``, the embedding least similar (cosine) to ``embedding``: another speaker's
    enrollment, in all likelihood (one voice scores ~0.7-0.9 against itself, others ~0.4-0.5)."""
    unit = np.stack(candidates) / np.linalg.norm(np.stack(candidates), axis=1, keepdims=True)
    return candidates[int(np.argmin(unit @ (embedding / np.linalg.norm(embedding))))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/real_rooms/conf.yaml")
    parser.add_argument("--model", action="append", default=[], help="a model folder, .onnx or .ckpt (repeatable); with two or more, the report adds each one's "
                             "SI-SDR difference to the last, paired per clip")
    parser.add_argument("--items", type=int, default=None, help="clips per split (default: all)")
    parser.add_argument("--splits", nargs="+", default=["test_unseen"], choices=["test", "test_unseen"])
    parser.add_argument("--out", default="results")
    parser.add_argument("--name", default="real_eval", help="file name of the results (OUT/NAME.{json,md,png})")
    parser.add_argument("--no-peers", action="store_true", help="only the noisy input and the --model systems")
    parser.add_argument("--target-row", action="store_true",
                        help="also score the target itself: its DNSMOS is the ceiling any system can reach on "
                             "these clips (its SI-SDR, PESQ and STOI are trivially the maximum)")
    parser.add_argument("--wrong-enrollment", action="store_true",
                        help="personalized: also run each personalized --model enrolled with another speaker "
                             "(the clip of the split whose embedding is least similar): does it follow the enrollment?")
    parser.add_argument("--talkers", type=int, default=None, choices=range(5), metavar="N",
                        help="personalized: every clip has exactly N competing talkers (default: the recipe's 0-2)")
    parser.add_argument("--sir-db", type=float, default=None,
                        help="personalized: every competing talker at this SIR, dB (default: the recipe's range)")
    parser.add_argument("--clean-targets", type=float, default=None, metavar="OVRL",
                        help="the clean-target set: test utterances whose dry DNSMOS OVRL (speechnorm screen) is at "
                             "least OVRL (2.8), the same rooms and noise conditions")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # every system takes (noisy, speaker): only a personalized model uses the speaker
    systems = {"noisy": lambda x, speaker: x[0].copy()}
    if not args.no_peers:
        peers = {"noisereduce": noisereduce_peer, "rnnoise": RNNoise(), "mvdr": mvdr_peer}
        if GTCRN.exists():
            peers["gtcrn"] = Gtcrn()
        else:
            print(f"GTCRN skipped: {GTCRN} is absent", file=sys.stderr)
        systems.update({name: (lambda peer: lambda x, speaker: peer(x))(peer) for name, peer in peers.items()})
    if args.target_row:
        systems[TARGET] = None  # scored on the target itself, below
    wrong, models = set(), []
    for path in args.model:
        name = Path(path).name if Path(path).is_dir() else f"{Path(path).parent.parent.name}/{Path(path).stem}"
        runner = Runner(path)
        systems[name] = ours(runner)
        models.append(name)
        if args.wrong_enrollment and runner.personalized:
            systems[f"{name} (wrong enrollment)"] = systems[name]
            wrong.add(f"{name} (wrong enrollment)")
    produced = clips(args.config, args.items, args.splits, args.talkers, args.sir_db, args.clean_targets)
    try:  # the recipe is checked before the first clip: a usage error, and only that one
        first = next(produced, None)
    except NotPersonalized as err:
        parser.error(str(err))
    every = ([] if first is None else [first]) + list(produced)
    if wrong and every[0][-1] is None:
        parser.error("--wrong-enrollment needs a personalized --config (its clips carry enrollments)")
    rows, personal = [], False
    for split, index, plan, noisy, clean, speaker in every:
        personal = speaker is not None
        impostor = least_similar(speaker, [c[-1] for c in every if c[0] == split]) if wrong else None
        row = {"split": split, "item": index, "mics": noisy.shape[0], "noise": plan["noise"],
               "t60": round(plan["t60"], 3), "t60_band": t60_band(plan["t60"]), "snr_db": round(plan["snr_db"], 2)}
        if personal:
            row.update(talkers=plan["interferers"], sir_db=round(plan["sir_db"], 2))
        for name, system in systems.items():
            started = time.perf_counter()
            estimate = clean.copy() if name == TARGET else system(noisy, impostor if name in wrong else speaker)
            row[f"{name}/rtf"] = (time.perf_counter() - started) / (noisy.shape[1] / RATE)
            row.update({f"{name}/{k}": v for k, v in score(estimate, noisy, clean, with_tsos=personal).items()})
        rows.append(row)
        print(f"{split} {index} ({plan['noise']}, T60 {plan['t60']:.2f}, {noisy.shape[0]} mics): "
              + "  ".join(f"{n} {row[f'{n}/si_sdr']:.1f}" for n in systems), flush=True)
    names = list(systems)
    metrics = (*METRICS, "tsos") if personal else METRICS
    result = {"config": args.config, "clips": len(rows), "talkers": args.talkers, "sir_db": args.sir_db,
              "models": models, "systems": names, "metrics": list(metrics),
              "mean": {split: {n: {m: mean([r[f"{n}/{m}"] for r in rows if r["split"] == split]) for m in (*metrics, "rtf")}
                               for n in names} for split in dict.fromkeys(r["split"] for r in rows)},
              "per_condition": per_condition(rows, names, metrics=metrics), "per_item": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{args.name}.md").write_text(markdown(result))
    chart(result, out / f"{args.name}.png")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    names = result["systems"]
    metrics = result.get("metrics", METRICS)
    splits = " + ".join(dict.fromkeys(r["split"] for r in result["per_item"]))
    lines = [f"{result['clips']} clips of `{result['config']}` ({splits}), every system on the same clips, "
             "scored by one function (`speechnorm.task`)."
             + (f" `{TARGET}` is the target scored against itself: only its DNSMOS says something (the most any "
                "system can get on these clips)." if TARGET in names else "")
             + (f" Every clip has exactly {result['talkers']} competing talker(s)." if result.get("talkers") is not None else "")
             + (f" Every competing talker is at {result['sir_db']:g} dB SIR." if result.get("sir_db") is not None else ""), ""]
    for split, systems in result["mean"].items():
        count = sum(1 for r in result["per_item"] if r["split"] == split)
        lines += [f"### {split} ({count} clips)", "", "| system | " + " | ".join(metrics) + " | RTF |",
                  "|---|" + "---:|" * (len(metrics) + 1)]
        lines += [f"| {n} | " + " | ".join(f"{systems[n][m]:.3f}" for m in metrics) + f" | {systems[n]['rtf']:.3f} |"
                  for n in names]
        lines.append("")
    for metric in ("si_sdr", "pesq", "stoi", "dnsmos_ovrl", "tsos")[: 5 if "tsos" in metrics else 4]:
        lines += [f"### {metric} per condition", "", "| grouping | condition | clips | " + " | ".join(names) + " |",
                  "|---|---|---:|" + "---:|" * len(names)]
        lines += [f"| {row['grouping']} | {row['condition']} | {row['clips']} | "
                  + " | ".join(f"{row[f'{n}/{metric}']:.2f}" for n in names) + " |"
                  for row in result["per_condition"] if row["grouping"] != "noise x T60 x mics"]
        lines.append("")
    models = result.get("models", [])
    if len(models) >= 2:  # paired per clip against the last --model: the spread of the difference itself
        reference, groupings = models[-1], [("all", lambda r: True)]
        if "talkers" in result["per_item"][0]:
            groupings += [(f"talkers {k}", (lambda k: lambda r: r["talkers"] == k)(k))
                          for k in sorted({r["talkers"] for r in result["per_item"]})]
        lines += [f"### SI-SDR difference to {reference}, paired per clip (mean ± standard error)", "",
                  "| clips | n | " + " | ".join(models[:-1]) + " |", "|---|---:|" + "---:|" * (len(models) - 1)]
        for label, keep in groupings:
            members = [r for r in result["per_item"] if keep(r)]
            cells = []
            for name in models[:-1]:
                diff = np.array([r[f"{name}/si_sdr"] - r[f"{reference}/si_sdr"] for r in members])
                error = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
                cells.append(f"{diff.mean():+.2f} ± {error:.2f}")
            lines.append(f"| {label} | {len(members)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def chart(result: dict, path: Path) -> None:
    """Noise kinds (personalized: numbers of competing talkers) on the x axis, a bar per system."""
    grouping = "talkers" if any(r["grouping"] == "talkers" for r in result["per_condition"]) else "noise"
    rows = {r["condition"]: r for r in result["per_condition"] if r["grouping"] == grouping}
    systems = [n for n in result["systems"] if n != TARGET]  # its trivial SI-SDR would flatten every other bar
    grouped_bars(path, list(rows), systems, lambda kind, system, key: rows[kind][f"{system}/{key}"])


if __name__ == "__main__":
    sys.exit(main())
