"""Streaming speed: per-hop latency and real-time factor of each model's step on one CPU thread.

    python scripts/bench_stream.py                        # eager torch, every model, small and base, M = 1, 4, 8
    python scripts/bench_stream.py --backend torchscript  # the same step traced and frozen

RTF = median time per hop / hop duration (10 ms); below 1 is faster than real time. The
torchscript backend traces ``step`` (a pure function of hop and state) once per model and mic
count; tracing drops the step's per-frame NaN check, so it is a speed measurement, not a
serving path.
"""

from __future__ import annotations

import argparse

import torch

from speechnorm.models import available, build, count_parameters
from speechnorm.models.speed import step_timings, summarize, traced_step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hops", type=int, default=300)
    parser.add_argument("--mics", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", choices=("torch", "torchscript"), default="torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# streaming step, {args.backend} backend, {args.threads} thread(s), torch {torch.__version__}, {args.hops} hops\n")
    print("| model | size | params | mics | median ms/hop | p99 ms/hop | RTF |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, spec in sorted(available().items()):
        for size in spec.sizes:
            model = build(name, size=size)
            for mics in args.mics:
                step = traced_step(model, mics) if args.backend == "torchscript" else None
                s = summarize(model, step_timings(model, mics=mics, hops=args.hops, step=step))
                print(f"| {name} | {size} | {count_parameters(model):,} | {mics} | {s['median_ms']:.2f} | "
                      f"{s['p99_ms']:.2f} | {s['rtf']:.3f} |")


if __name__ == "__main__":
    main()
