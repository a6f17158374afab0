"""One training step of an enhancement model with Online Norm vs BatchNorm (and others).

    python scripts/bench_train_step.py                          # CPU, tac_crn and tac_gru small
    python scripts/bench_train_step.py --device cuda --batch 16 --seconds 4
    python scripts/bench_train_step.py --device cuda --size base --batch 32

Times forward + loss + backward + optimizer step on random multi-channel audio, median of
``--repeats``, and prints each normalizer's time relative to BatchNorm's.
"""

from __future__ import annotations

import argparse

import torch

from speechnorm.models import build
from speechnorm.models.speed import median_seconds


def step_time(model, audio, device, repeats):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    target = audio[:, 0]

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = (model(audio) - target).square().mean()
        loss.backward()
        optimizer.step()

    return median_seconds(step, device, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["tac_crn", "tac_gru"])
    parser.add_argument("--norms", nargs="+", default=["batch", "online", "layer", "none"])
    parser.add_argument("--size", default="small", help="the models' named size (small, base)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--mics", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    samples = int(args.seconds * 16000) // 160 * 160
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# training step (fwd + loss + bwd + Adam), {name}, size {args.size}, batch {args.batch} x {args.mics} mics x "
          f"{args.seconds:g} s, median of {args.repeats}\n")
    print("| model | norm | ms/step | × BatchNorm |")
    print("|---|---|---:|---:|")
    for model_name in args.models:
        torch.manual_seed(0)
        audio = (torch.randn(args.batch, args.mics, samples) * 0.1).to(device)
        times = {}
        for norm in args.norms:
            model = build(model_name, norm=norm, size=args.size).to(device).train()
            times[norm] = step_time(model, audio, device, args.repeats)
        base = times.get("batch", next(iter(times.values())))
        for norm, seconds in times.items():
            print(f"| {model_name} | {norm} | {seconds * 1e3:.1f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
