"""Training and streaming memory: Online Norm at batch 1 against BatchNorm at the batch it needs.

    python scripts/bench_memory.py                       # CPU: peak RSS growth, each case in a fresh process
    python scripts/bench_memory.py --device cuda         # CUDA: torch.cuda.max_memory_allocated

One training step (forward, loss, backward, AdamW) of the small TAC-GRU on one long utterance
(default 30 s, 4 mics) per batch item. Each case runs in its own subprocess, and the figure is
the peak resident memory of that process minus its memory before the step (model built, data
made). The batch sizes compared: Online Norm at 1 (it needs no batch) against BatchNorm at 8 (the
recipe's batch size) and at 1. Also the streaming state per stream: what one connection of
`speechnorm serve` holds between hops.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch


def one_case(norm: str, batch: int, seconds: float, mics: int, device: str) -> dict:
    from speechnorm.models import build

    torch.manual_seed(0)
    model = build("tac_gru", norm=norm, size="small").to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    samples = int(seconds * 16000) // 160 * 160
    noisy = 0.1 * torch.randn(batch, mics, samples, device=device)
    target = noisy[:, 0]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loss = (model(noisy) - target).square().mean()
    loss.backward()
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_rss) * 1024
    return {"norm": norm, "batch": batch, "peak_mb": peak / 2**20}


def state_bytes(mics: int) -> int:
    from speechnorm.models import build
    from speechnorm.state import flatten

    model = build("tac_gru", norm="online", size="small").eval()
    return sum(t.numel() * t.element_size() for t in flatten(model.initial_state(1, mics=mics)).values())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--mics", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: "norm,batch"
    args = parser.parse_args(argv)
    if args.case:
        norm, batch = args.case.split(",")
        print(json.dumps(one_case(norm, int(batch), args.seconds, args.mics, args.device)))
        return
    what = "peak RSS growth" if args.device == "cpu" else "CUDA peak allocated"
    print(f"# one training step, tac_gru small, {args.seconds:g} s x {args.mics} mics per item, {args.device}, {what}\n")
    print("| normalizer | batch | peak MB | × Online Norm at batch 1 |")
    print("|---|---:|---:|---:|")
    baseline = None
    for norm, batch in (("online", 1), ("batch", 8), ("batch", 1)):
        done = subprocess.run([sys.executable, __file__, "--case", f"{norm},{batch}", "--seconds", str(args.seconds),
                               "--mics", str(args.mics), "--device", args.device], capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        baseline = baseline or row["peak_mb"]
        print(f"| {norm} | {batch} | {row['peak_mb']:.0f} | {row['peak_mb'] / baseline:.2f} |", flush=True)
    print("\n| streaming state per stream | 1 mic | 4 mics | 8 mics |\n|---|---:|---:|---:|")
    print("| bytes | " + " | ".join(f"{state_bytes(m):,}" for m in (1, 4, 8)) + " |")


if __name__ == "__main__":
    main()
