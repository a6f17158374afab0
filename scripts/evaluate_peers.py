"""Side by side on the same clips: the noisy reference mic, classical and neural peers, and ours.

    make peers                                                         # installs the peers, writes results/peers.{md,json,png}
    python scripts/evaluate_peers.py                                   # the same, peers already installed
    python scripts/evaluate_peers.py --items 8 --out /tmp/peers        # quicker
    python scripts/evaluate_peers.py --ablation runs/norm_ablation     # + our models with each normalizer

Systems:
- `noisy`: mic 0, unprocessed.
- `noisereduce`: spectral gating, non-stationary (PyPI `noisereduce`), on mic 0.
- `rnnoise`: RNNoise (the library and weights that the `pyrnnoise` wheel ships, called directly
  through ctypes). It runs at 48 kHz mono, so mic 0 is resampled to 48 kHz and back, and its
  measured 960-sample (20 ms) delay is removed.
- `mvdr`: a classical multi-channel beamformer, torchaudio's `SoudenMVDR` with `PSD`. The
  speech/noise masks come from a per-bin noise floor (the 20th percentile of each bin's power
  over the clip). This is not an oracle and not a network.
- `ours`: the default released model (`models/tac_gru_online_small_v2`) through the exported ONNX graph.
  With `--ablation`, the final checkpoint of each ablation run at `--ablation-batch` (8) is added
  (`ours-<norm>_b8`: same model, data and steps, one normalizer swapped; run by PyTorch, so
  their RTF is the eager offline forward's).

Clips: the released model's own `test` (seen array types) and `test_unseen` (held-out arrays)
splits, rebuilt from its card with its fixed seeds. Also the bundled real-speech example
(`real_example`). Nothing is tuned on them. Metrics: SI-SDR, wide-band PESQ, STOI, DNSMOS
SIG/BAK/OVRL, against the target (direct path + 50 ms at mic 0). RTF is processing time over
audio duration, on one thread.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechnorm.assets import ASSETS, EXAMPLE
from speechnorm.data.datamodule import EnhancementDataModule
from speechnorm.data.resample import resample
from speechnorm.evaluate import METRICS, Runner, mean
from speechnorm.scoring import score_clip

RATE = 16_000
MODEL = Path("models/tac_gru_online_small_v2")


# ------------------------------------------------------------------------------------ peers
def noisereduce_peer(noisy: np.ndarray) -> np.ndarray:
    import noisereduce

    return noisereduce.reduce_noise(y=noisy[0], sr=RATE, stationary=False).astype(np.float32)


class RNNoise:
    """RNNoise through the shared library in the pyrnnoise wheel (48 kHz, 480-sample frames)."""

    FRAME, RATE, DELAY = 480, 48_000, 960

    def __init__(self):
        spec = importlib.util.find_spec("pyrnnoise")
        if spec is None:
            raise RuntimeError("pyrnnoise is not installed: pip install --no-deps pyrnnoise==0.4.5")
        lib = ctypes.CDLL(os.path.join(spec.submodule_search_locations[0], "librnnoise.so"))
        lib.rnnoise_create.restype, lib.rnnoise_create.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
        lib.rnnoise_process_frame.restype = ctypes.c_float
        lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_float)]
        self.lib = lib

    def __call__(self, noisy: np.ndarray) -> np.ndarray:
        x = resample(noisy[:1], RATE, self.RATE)[0] * 32768.0
        x = np.pad(x, (0, self.DELAY + (-(x.size + self.DELAY)) % self.FRAME)).astype(np.float32)
        out = np.zeros_like(x)
        state = self.lib.rnnoise_create(None)
        pointer = ctypes.POINTER(ctypes.c_float)
        try:
            for start in range(0, x.size, self.FRAME):
                frame_in, frame_out = np.ascontiguousarray(x[start : start + self.FRAME]), np.zeros(self.FRAME, np.float32)
                self.lib.rnnoise_process_frame(state, frame_out.ctypes.data_as(pointer), frame_in.ctypes.data_as(pointer))
                out[start : start + self.FRAME] = frame_out
        finally:
            self.lib.rnnoise_destroy(state)
        aligned = out[self.DELAY :] / 32768.0
        return resample(aligned[None], self.RATE, RATE)[0][: noisy.shape[1]]


def mvdr_peer(noisy: np.ndarray) -> np.ndarray:
    import torchaudio

    n_fft, hop = 512, 128
    audio = torch.from_numpy(noisy)
    window = torch.hann_window(n_fft)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True)  # (M, F, T)
    power = spec[0].abs().square()
    floor = torch.quantile(power, 0.2, dim=-1, keepdim=True)
    speech_mask = (1 - floor / (power + 1e-10)).clamp(0, 1)
    psd = torchaudio.transforms.PSD()
    psd_s, psd_n = psd(spec, speech_mask), psd(spec, 1 - speech_mask)
    enhanced = torchaudio.transforms.SoudenMVDR()(spec, psd_s, psd_n, reference_channel=0)
    return torch.istft(enhanced, n_fft, hop, window=window, length=noisy.shape[1]).numpy().astype(np.float32)


def ours(runner: Runner):
    if runner.delay != DELAY:
        raise ValueError(f"{runner.description['path']}: delay {runner.delay} samples, the comparison assumes {DELAY}")

    def enhance(noisy: np.ndarray, speaker: np.ndarray | None = None) -> np.ndarray:
        """``speaker``: the target's embedding, for a personalized model (a plain one ignores it)."""
        out = runner(torch.from_numpy(noisy), None if speaker is None else torch.from_numpy(speaker)).numpy()
        return np.pad(out[runner.delay :], (0, runner.delay))  # align: out[n + delay] estimates x[n]

    return enhance


# ------------------------------------------------------------------------------------ clips
def clips(items: int | None):
    """(split, index, noisy (M, N), clean (N,)) for the released model's test splits and the example."""
    card = json.loads((MODEL / "card.json").read_text())
    hparams = {k: v for k, v in card["training"]["data"].items() if not k.startswith("_")}
    data = EnhancementDataModule(**hparams)
    data.prepare_data()
    data.setup()
    for split in ("test", "test_unseen"):
        dataset = data.datasets[split]
        for index in range(min(items or len(dataset), len(dataset))):
            noisy, target = dataset[index]
            yield split, index, noisy.numpy(), target.numpy()
    noisy, _ = sf.read(EXAMPLE, dtype="float32")
    clean, _ = sf.read(ASSETS / "example_clean.flac", dtype="float32")
    yield "real_example", 0, np.ascontiguousarray(noisy.T), clean


#: Our models' fixed delay: every system is scored over the first N - DELAY samples of a clip, the
#: span ``speechnorm evaluate`` scores our models over, so a checkpoint has one number per clip.
DELAY = 160


def score(estimate: np.ndarray, noisy: np.ndarray, clean: np.ndarray, with_tsos: bool = False) -> dict:
    """One system's aligned output on one clip, by ``speechnorm.scoring.score_clip`` over the common span."""
    span = clean.shape[-1] - DELAY
    scores = score_clip(estimate[:span], noisy[:, :span], clean[:span], RATE, with_noisy=False, with_tsos=with_tsos)
    return {key.removeprefix("enhanced/"): value for key, value in scores.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=None, help="items per test split (default: all)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--ablation", default=None, help="runs/norm_ablation: add each run's final checkpoint")
    parser.add_argument("--ablation-batch", type=int, default=8, help="only the ablation runs at this batch size")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    systems = {"noisy": lambda x: x[0].copy(), "noisereduce": noisereduce_peer, "rnnoise": RNNoise(), "mvdr": mvdr_peer,
               "ours": ours(Runner(MODEL / "model.onnx"))}
    if args.ablation:
        runs = Path(args.ablation).glob(f"*_b{args.ablation_batch}")  # <norm>_b<batch>/version_*/checkpoints
        for run in sorted(p for p in runs if p.is_dir()):
            ckpts = sorted(run.glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
            if ckpts:
                systems[f"ours-{run.name}"] = ours(Runner(ckpts[-1]))
    rows = []
    for split, index, noisy, clean in clips(args.items):
        for name, system in systems.items():
            start = time.perf_counter()
            estimate = system(noisy)
            seconds = time.perf_counter() - start
            rows.append({"split": split, "item": index, "system": name, "mics": noisy.shape[0],
                         "rtf": seconds / (noisy.shape[1] / RATE), **score(estimate, noisy, clean)})
        print(f"{split} {index}: done", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, systems)
    (out / "peers.json").write_text(json.dumps({"summary": summary, "per_item": rows}, indent=2))
    (out / "peers.md").write_text(markdown(summary))
    chart(summary, out / "peers.png")
    print((out / "peers.md").read_text())


def summarize(rows: list[dict], systems: dict) -> dict:
    summary = {}
    for split in dict.fromkeys(r["split"] for r in rows):
        summary[split] = {}
        for name in systems:
            mine = [r for r in rows if r["split"] == split and r["system"] == name]
            summary[split][name] = {m: mean([r[m] for r in mine]) for m in (*METRICS, "rtf")} | {"items": len(mine)}
    return summary


def markdown(summary: dict) -> str:
    lines = []
    for split, systems in summary.items():
        items = next(iter(systems.values()))["items"]
        lines += [f"### {split} ({items} clip{'s' if items > 1 else ''})", "",
                  "| system | SI-SDR dB | PESQ-wb | STOI | DNSMOS SIG | BAK | OVRL | RTF (1 thread) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, m in systems.items():
            lines.append(f"| {name} | {m['si_sdr']:.2f} | {m['pesq']:.2f} | {m['stoi']:.3f} | {m['dnsmos_sig']:.2f} | "
                         f"{m['dnsmos_bak']:.2f} | {m['dnsmos_ovrl']:.2f} | {m['rtf']:.3f} |")
        lines.append("")
    return "\n".join(lines)


CHART_METRICS = (("si_sdr", "SI-SDR (dB)"), ("pesq", "PESQ-wb"), ("stoi", "STOI"), ("dnsmos_ovrl", "DNSMOS OVRL"))


def grouped_bars(path: Path, groups: list[str], series: list[str], value, tick_labels: str = "groups") -> None:
    """One panel per metric of ``CHART_METRICS``: for each of ``groups`` on the x axis, a bar per
    ``series`` (``value(group, series, metric)``); the legend names the series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CHART_METRICS), figsize=(4 * len(CHART_METRICS), 3.8))
    width = 0.8 / len(series)
    for ax, (key, label) in zip(axes, CHART_METRICS):
        for k, name in enumerate(series):
            ax.bar(np.arange(len(groups)) + k * width, [value(group, name, key) for group in groups], width, label=name)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=30, ha="right")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def chart(summary: dict, path: Path) -> None:
    """Systems on the x axis, a bar per split."""
    splits = list(summary)
    grouped_bars(path, list(summary[splits[0]]), splits, lambda system, split, key: summary[split][system][key])


if __name__ == "__main__":
    main()
