"""One training step of an enhancement model with Online Norm vs BatchNorm (and others).

    python scripts/bench_train_step.py                          # CPU, tac_crn and tac_gru small
    python scripts/bench_train_step.py --device cuda --batch 16 --seconds 4
    python scripts/bench_train_step.py --device cuda --size base --batch 32
    python scripts/bench_train_step.py --device cuda --cuda-graph   # also the step captured in a CUDA graph

Times forward + loss + backward + optimizer step on random multi-channel audio, median of
``--repeats``, and prints each normalizer's time relative to BatchNorm's.
"""

from __future__ import annotations

import argparse
import sys

import torch

from speechnorm.models import build
from speechnorm.models.speed import median_seconds


def step_time(model, audio, device, repeats, graph=False):
    """Median seconds of one training step; ``graph``: the whole step captured once in a CUDA graph
    and replayed (no host work per step: what the kernels alone cost)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, capturable=graph)
    target = audio[:, 0]

    def step():
        optimizer.zero_grad(set_to_none=not graph)
        estimate = model(audio)
        length = min(estimate.shape[-1], target.shape[-1])
        loss = (estimate[..., :length] - target[..., :length]).square().mean()
        loss.backward()
        optimizer.step()

    if not graph:
        return median_seconds(step, device, repeats)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    captured = torch.cuda.CUDAGraph()
    with torch.cuda.graph(captured):
        step()
    return median_seconds(captured.replay, device, repeats)


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
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time each step captured in a CUDA graph (no per-step host work)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    samples = int(args.seconds * 16000) // 160 * 160
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# training step (fwd + loss + bwd + Adam), {name}, size {args.size}, batch {args.batch} x {args.mics} mics x "
          f"{args.seconds:g} s, median of {args.repeats}\n")
    graph = args.cuda_graph and device.type == "cuda"
    if args.cuda_graph and not graph:
        parser.error("--cuda-graph needs --device cuda")
    print("| model | norm | ms/step | × BatchNorm |" + (" graphed ms/step | × BatchNorm graphed |" if graph else ""))
    print("|---|---|---:|---:|" + ("---:|---:|" if graph else ""))
    for model_name in args.models:
        torch.manual_seed(0)
        audio = (torch.randn(args.batch, args.mics, samples) * 0.1).to(device)
        times, graphed = {}, {}
        for norm in args.norms:
            model = build(model_name, norm=norm, size=args.size).to(device).train()
            times[norm] = step_time(model, audio, device, args.repeats)
            if graph:
                try:
                    graphed[norm] = step_time(model, audio, device, args.repeats, graph=True)
                except RuntimeError as error:  # a model that syncs with the host cannot be captured
                    print(f"{model_name}/{norm}: capture failed: {error}", file=sys.stderr)
                    graphed[norm] = float("nan")
        base = times.get("batch", next(iter(times.values())))
        graphed_base = graphed.get("batch", next(iter(graphed.values()), float("nan")))
        for norm, seconds in times.items():
            row = f"| {model_name} | {norm} | {seconds * 1e3:.1f} | {seconds / base:.2f} |"
            if graph:
                row += f" {graphed[norm] * 1e3:.1f} | {graphed[norm] / graphed_base:.2f} |"
            print(row)


if __name__ == "__main__":
    main()
