"""Per-stream cost of the streaming step: one call per stream and hop against streams batched.

    python scripts/bench_batch.py                                   # the default model, 1 and 4 mics
    python scripts/bench_batch.py --model models/tac_gru_online_small_v2 --streams 1 8 64 --mics 4

For each stream count S, every stream advances by one hop (10 ms) per *round*:
- per stream: S calls of the one-stream step graph (``model.onnx``, IO binding, as
  ``speechnorm.stream`` runs it);
- batched: one call of the batched step graph (``model_batch.onnx``) through a ``StatePool``,
  the states gathered and scattered by row, as ``speechnorm serve`` runs it.
Prints the median over rounds of CPU time per stream and hop (this process, one onnxruntime
thread) and its RTF (/ 10 ms), and each batched row's speed-up over the per-stream row with the
same S, measured in the same run. Runtime only: numpy and onnxruntime.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from speechnorm.enhance import default_model
from speechnorm.stream.backends import load
from speechnorm.stream.batch import StatePool


def rounds(run_round, count: int, warmup: int = 5) -> float:
    """Median CPU seconds of one round."""
    for _ in range(warmup):
        run_round()
    times = []
    for _ in range(count):
        start = time.process_time()
        run_round()
        times.append(time.process_time() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="an exported model folder (default: the released model)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--mics", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=200, help="rounds timed per row")
    args = parser.parse_args(argv)
    model = load(args.model or default_model(), backend="onnx", threads=1)
    hop_s = model.hop / model.sample_rate
    rng = np.random.default_rng(0)
    print(f"# {model.name}: CPU time per stream and {1000 * hop_s:g} ms hop, median of {args.rounds} rounds, "
          "one onnxruntime thread\n")
    print("| mics | streams | per-stream calls ms/hop | RTF | batched ms/hop | RTF | batched speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for mics in args.mics:
        for streams in args.streams:
            audio = (0.1 * rng.standard_normal((streams, mics, model.hop))).astype(np.float32)
            alone = [model.open(mics) for _ in range(streams)]

            def per_stream():
                for stream, hop in zip(alone, audio):
                    stream.step(hop)

            pool = StatePool(model, mics, capacity=streams)
            slots = [pool.acquire() for _ in range(streams)]

            def batched():
                pool.run(slots, audio)

            one = rounds(per_stream, args.rounds) / streams
            many = rounds(batched, args.rounds) / streams
            print(f"| {mics} | {streams} | {1000 * one:.4f} | {one / hop_s:.4f} | {1000 * many:.4f} | {many / hop_s:.4f} "
                  f"| {one / many:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
