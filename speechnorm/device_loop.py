"""Training fed on the device: the pack decoded onto it, the room bank built there, items mixed
there per step (``data.mixing``), the model trained for a wall-clock budget, no DataLoader.

What a lent GPU runs in one call (``scripts/device_train.sh``); on the CPU the same code is its dry
run. Writes under ``out``: ``model.ckpt`` (what ``speechnorm export``/``evaluate`` and
``init_from`` read), ``curve.csv`` and ``curve.png`` (training loss and validation SI-SDR over
steps), ``summary.json`` (steps, steps/s, the share of step time spent making data, validation
SI-SDR before and after) and ``log.txt``.

    python -m speechnorm.device_loop --pack .cache/pack --out runs/device_train --budget 420
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as si_sdr

from .data import pack
from .data.bank import BankSettings, RoomBank, build
from .data.mixing import BankMixSpec, draw_plans, mix
from .models import build as build_model
from .models.checkpoint import NORM_DEFAULTS_KEY
from .norm import DEFAULTS_VERSION
from .scoring import align
from .task import MultiResolutionSTFTLoss

def _validation(model, items: list, delay: int) -> tuple[float, float]:
    """Mean SI-SDR of the model and of the noisy reference mic over fixed validation batches."""
    model.eval()
    ours, noisy_scores = [], []
    with torch.no_grad():
        for noisy, target in items:
            estimate, aligned = align(model(noisy), target, delay)
            ours.append(si_sdr(estimate, aligned))
            noisy_scores.append(si_sdr(noisy[:, 0], target))
    model.train()
    return float(torch.cat(ours).mean()), float(torch.cat(noisy_scores).mean())


def run(pack_dir: str | Path, out: str | Path, budget_s: float, device: str | None = None, batch: int = 32,
        seconds: float = 3.0, bank_rooms: int = 20_000, bank_dir: str | Path | None = None, model: str = "tac_gru",
        size: str = "small", init_from: str | None = None, lr: float = 1e-3, val_batches: int = 8,
        val_every_s: float = 60.0, seed: int = 0, log=print) -> dict:
    started = time.time()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []

    def say(text: str) -> None:
        lines.append(f"[{time.time() - started:7.1f} s] {text}")
        log(lines[-1])
        (out / "log.txt").write_text("\n".join(lines) + "\n")

    torch.manual_seed(seed)
    speech, noise = pack.read(pack_dir, "train", device)
    val_speech, val_noise = pack.read(pack_dir, "val", device)
    say(f"{device}: pack decoded: train speech {len(speech)} utterances, {speech.audio.numel() / 16000 / 3600:.2f} h; "
        f"noise {noise.audio.numel() / 16000 / 3600:.2f} h")
    bank_dir = Path(bank_dir) if bank_dir else Path(".cache") / f"room_bank_{bank_rooms}"  # not under OUT: it is GBs
    settings = BankSettings(rooms=bank_rooms, chunk=min(256, bank_rooms), seed=seed)
    bank = build(bank_dir, settings, device=device).to(device)
    say(f"room bank: {len(bank)} rooms x {settings.mics} mics x {settings.sources} sources")
    spec = BankMixSpec(seconds=seconds, mics=(2, 6))  # the real_rooms recipe's noise kinds
    hyper = {"model": model, "norm": "online", "size": size, "model_config": None}
    if init_from:  # the source's own model and normalizer settings (its defaults pinned), not today's
        from .models.checkpoint import load_model

        net, info = load_model(init_from)
        hyper = {key: info.get(key, hyper[key]) for key in hyper}
        net = net.to(device).train()
    else:
        net = build_model(model, norm="online", size=size).to(device)
    loss_stft = MultiResolutionSTFTLoss().to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    delay = net.delay_samples

    # fixed validation batches: items of the validation voices, a function of the seed alone
    val_items = []
    for b in range(val_batches):
        indices = list(range(b * 8, b * 8 + 8))
        plans = draw_plans(indices, seed + 1000, 8, spec, bank, val_speech, val_noise)
        val_items.append(mix(plans, val_speech, val_noise, bank, seconds))
    before, noisy_sdr = _validation(net, val_items, delay)
    say(f"validation before: SI-SDR {before:.2f} dB (noisy {noisy_sdr:.2f} dB, {8 * val_batches} clips)")
    curve = [("step", "seconds", "train_loss", "train_si_sdr", "val_si_sdr")]
    curve.append((0, round(time.time() - started, 1), "", "", round(before, 3)))

    setup = time.time() - started
    train_budget = max(budget_s - setup - min(15.0, 0.25 * budget_s), 1.0)  # time left for the last validation, files
    step, data_time, step_time, last_val, losses, sdrs = 0, 0.0, 0.0, time.time(), [], []
    train_start = time.time()
    while time.time() - train_start < train_budget:
        progress = (time.time() - train_start) / train_budget
        factor = min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        tick = time.time()
        indices = list(range(step * batch, (step + 1) * batch))
        noisy, target = mix(draw_plans(indices, seed, batch, spec, bank, speech, noise), speech, noise, bank, seconds)
        if device.type == "cuda":
            torch.cuda.synchronize()
        made = time.time()
        estimate, aligned = align(net(noisy), target, delay)
        sdr = si_sdr(estimate, aligned).mean()
        loss = -sdr + loss_stft(estimate, aligned)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        losses.append(float(loss))
        sdrs.append(float(sdr))
        done = time.time()
        data_time, step_time, step = data_time + made - tick, step_time + done - tick, step + 1
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss is {losses[-1]} at step {step}")
        if time.time() - last_val >= val_every_s:
            value, _ = _validation(net, val_items, delay)
            curve.append((step, round(time.time() - started, 1), round(sum(losses) / len(losses), 4),
                          round(sum(sdrs) / len(sdrs), 3), round(value, 3)))
            say(f"step {step}: loss {curve[-1][2]}, train SI-SDR {curve[-1][3]} dB, val SI-SDR {value:.2f} dB, "
                f"{step / (time.time() - train_start):.1f} steps/s, data {100 * data_time / step_time:.0f} % of step time")
            losses, sdrs, last_val = [], [], time.time()
    trained = time.time() - train_start
    after, _ = _validation(net, val_items, delay)
    curve.append((step, round(time.time() - started, 1), round(sum(losses) / len(losses), 4) if losses else "",
                  round(sum(sdrs) / len(sdrs), 3) if sdrs else "", round(after, 3)))
    summary = {"device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
               "steps": step, "batch": batch, "seconds_per_item": seconds, "train_seconds": round(trained, 1),
               "steps_per_s": round(step / trained, 2), "data_share_of_step": round(data_time / max(step_time, 1e-9), 3),
               "bank_rooms": len(bank), "val_clips": 8 * val_batches, "val_si_sdr_before": round(before, 3),
               "val_si_sdr_after": round(after, 3), "val_si_sdr_noisy": round(noisy_sdr, 3), "model": model, "size": size,
               "init_from": init_from, "pack": pack.summary(pack.load_meta(pack_dir))}
    torch.save({"state_dict": {f"model.{k}": v.cpu() for k, v in net.state_dict().items()},
                "hyper_parameters": hyper,
                "global_step": step, NORM_DEFAULTS_KEY: DEFAULTS_VERSION}, out / "model.ckpt")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    with open(out / "curve.csv", "w") as handle:
        handle.write("\n".join(",".join(map(str, row)) for row in curve) + "\n")
    _plot(curve, out / "curve.png")
    say(f"done: {step} steps in {trained:.0f} s ({summary['steps_per_s']} steps/s), data "
        f"{100 * summary['data_share_of_step']:.0f} % of step time; val SI-SDR {before:.2f} -> {after:.2f} dB")
    return summary


def _plot(curve: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = curve[1:]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r[0] for r in rows], [r[4] for r in rows], "o-", label="validation SI-SDR")
    trained = [r for r in rows if r[3] != ""]
    if trained:
        axis.plot([r[0] for r in trained], [r[3] for r in trained], ".-", label="training SI-SDR (mean since last point)")
    axis.set_xlabel("step")
    axis.set_ylabel("SI-SDR (dB)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", required=True, help="a corpus pack (speechnorm data --pack)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=420.0, help="wall-clock seconds for everything")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0, help="item length")
    parser.add_argument("--bank-rooms", type=int, default=20_000)
    parser.add_argument("--bank-dir", default=None, help="where the bank is built or reused (default .cache/room_bank_N)")
    parser.add_argument("--size", default="small")
    parser.add_argument("--init-from", default=None, help="a checkpoint or released model to start from")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--val-every", type=float, default=60.0, help="seconds between validations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        run(args.pack, args.out, args.budget, args.device, args.batch, args.seconds, args.bank_rooms, args.bank_dir,
            size=args.size, init_from=args.init_from, lr=args.lr, val_batches=args.val_batches,
            val_every_s=args.val_every, seed=args.seed, log=lambda line: print(line, flush=True))
    except (pack.PackError, ValueError) as err:
        print(f"device_loop: {err}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
