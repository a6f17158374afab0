"""Streaming speed: per-hop latency and real-time factor of each model's step on one CPU thread.

    python scripts/bench_stream.py                              # every backend, every model and size, M = 1, 4, 8
    python scripts/bench_stream.py --backend onnx --models tac_gru --sizes small
    python scripts/bench_stream.py --graphs old/model.onnx models/tac_gru_online_small_v2/model.onnx   # exported files, same run

Backends: ``torch`` (eager ``model.step``), ``torchscript`` (the same step traced and frozen; a
speed reference, not a serving path: tracing drops the per-frame NaN check) and ``onnx`` (the
exported step graph in onnxruntime through ``speechnorm.stream``, the serving path, with its
IO binding; the engine checks each hop for NaN before the graph). Untrained weights: speed does
not depend on them. RTF = median time per hop / hop duration (10 ms); the last column is each
row's speed-up over eager torch for the same model and mic count, measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from speechnorm.export import export_module
from speechnorm.models import available, build, count_parameters
from speechnorm.models.speed import step_timings, summarize, traced_step
from speechnorm.stream import OnnxModel

BACKENDS = ("torch", "torchscript", "onnx")


def onnx_timings(model, mics: int, hops: int, warmup: int = 20) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        export_module(model, tmp, max_mics=max(8, mics))
        return graph_timings(f"{tmp}/model.onnx", mics, hops, warmup)


def graph_timings(path: str, mics: int, hops: int, warmup: int = 20) -> list[float]:
    """Seconds per hop of an exported step graph streamed through ``speechnorm.stream`` (IO binding)."""
    onnx_model = OnnxModel(path, threads=1)
    stream = onnx_model.open(mics)
    audio = (0.1 * np.random.default_rng(0).standard_normal((mics, onnx_model.hop))).astype(np.float32)
    timings = []
    for i in range(warmup + hops):
        start = time.perf_counter()
        stream.step(audio)
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    return timings


def compare_graphs(paths: list[str], mic_counts: list[int], hops: int, rounds: int = 5) -> None:
    """Exported step graphs timed in the same run, interleaved round by round (machine noise hits all alike)."""
    print(f"# exported step graphs, 1 thread, {rounds} interleaved rounds of {hops} hops; median ms/hop\n")
    print("| graph | state tensors | mics | median ms/hop | RTF | × first graph |")
    print("|---|---:|---:|---:|---:|---:|")
    for mics in mic_counts:
        samples = {path: [] for path in paths}
        for _ in range(rounds):
            for path in paths:
                samples[path] += graph_timings(path, mics, hops)
        medians = {path: float(np.median(samples[path])) for path in paths}
        for path in paths:
            states = len(OnnxModel(path).states)
            print(f"| `{path}` | {states} | {mics} | {medians[path] * 1e3:.3f} | {medians[path] / 0.01:.3f} | "
                  f"{medians[paths[0]] / medians[path]:.2f} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hops", type=int, default=300)
    parser.add_argument("--mics", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", choices=BACKENDS, nargs="+", default=list(BACKENDS))
    parser.add_argument("--models", nargs="+", default=sorted(available()))
    parser.add_argument("--sizes", nargs="+", default=["small", "base"])
    parser.add_argument("--graphs", nargs="+", default=None, help="time these exported step graphs (model.onnx) instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.graphs:
        return compare_graphs(args.graphs, args.mics, args.hops)
    print(f"# streaming step, {args.threads} thread(s), torch {torch.__version__}, {args.hops} hops\n")
    print("| model | size | params | mics | backend | median ms/hop | p99 ms/hop | RTF | × eager torch |")
    print("|---|---|---:|---:|---|---:|---:|---:|---:|")
    for name in args.models:
        for size in [s for s in available()[name].sizes if s in args.sizes]:
            model = build(name, size=size).eval()
            for mics in args.mics:
                eager = None
                for backend in ["torch", *[b for b in args.backend if b != "torch"]]:
                    if backend == "onnx":
                        timings = onnx_timings(model, mics, args.hops)
                    else:
                        step = traced_step(model, mics) if backend == "torchscript" else None
                        timings = step_timings(model, mics=mics, hops=args.hops, step=step)
                    s = summarize(model, timings)
                    eager = eager or s["median_ms"]
                    if backend in args.backend:
                        print(f"| {name} | {size} | {count_parameters(model):,} | {mics} | {backend} | {s['median_ms']:.3f} | "
                              f"{s['p99_ms']:.3f} | {s['rtf']:.3f} | {eager / s['median_ms']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
