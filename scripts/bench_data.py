"""Items per second of the two ways training items are made, on one thread, the same item spec:

- old: ``SimulatedMixtures`` (pyroomacoustics image sources per item + a diffuse tail, the
  ``real_rooms`` recipe's settings);
- new: ``BankMixtures`` (a bank room × speech crop × noise by batched FFT convolution), in
  batches of ``--batch``.

Both: 3 s items of 2-6 mics, T60 0.15-1.0 s, talker 0.5-3 m away, the same noise kinds and SNR
range, sensor noise and mic gains, from the same corpus split. The last line is JSON with
``old_items_per_s``, ``new_items_per_s`` and their ratio.

    speechnorm data && speechnorm bank            # the corpus and the room bank (once)
    python scripts/bench_data.py --json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from speechnorm.data.bank import RoomBank
from speechnorm.data.corpus import Corpus
from speechnorm.data.dataset import SimulatedMixtures
from speechnorm.data.mixing import BankMixSpec, BankMixtures
from speechnorm.data.pool import pools_from_corpus
from speechnorm.data.rooms import MixSpec

KINDS = BankMixSpec().noise_kinds  # the real_rooms recipe's mix, for both paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech-dir", default=".cache/real_corpus/speech")
    parser.add_argument("--noise-dir", default=".cache/real_corpus/noise")
    parser.add_argument("--bank", default=".cache/room_bank")
    parser.add_argument("--old-items", type=int, default=24)
    parser.add_argument("--new-batches", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for folder in (args.speech_dir, args.noise_dir):
        if not (Path(folder) / "manifest.csv").exists():
            parser.error(f"{folder} holds no corpus: build it with `speechnorm data`")
    corpus = Corpus(args.speech_dir, args.noise_dir, "train")
    bank = RoomBank(args.bank)

    spec = MixSpec(snr_db=(-5.0, 15.0), t60=(0.15, 1.0), distance=(0.5, 3.0), late_reverb=True, mic_gain_db=2.0,
                   sensor_snr_db=(40.0, 70.0), noise_kinds=KINDS)
    old = SimulatedMixtures(corpus, "train", 10_000, seconds=3.0, seed=1, mic_block=args.batch, spec=spec,
                            measured_fraction=0.0)
    old[0]  # file reads warm
    started = time.perf_counter()
    for index in range(1, 1 + args.old_items):
        old[index]
    old_rate = args.old_items / (time.perf_counter() - started)
    print(f"old: {old_rate:.2f} items/s ({args.old_items} items, 1 thread)", flush=True)

    speech, noise = pools_from_corpus(corpus)  # decoded once, as a training run does before its first step
    new = BankMixtures(bank, speech, noise, 10_000, seed=1, mic_block=args.batch,
                       spec=BankMixSpec(seconds=3.0, mics=(2, 6)))
    new.__getitems__(list(range(args.batch)))
    started = time.perf_counter()
    for batch in range(1, 1 + args.new_batches):
        new.__getitems__(list(range(batch * args.batch, (batch + 1) * args.batch)))
    new_rate = args.new_batches * args.batch / (time.perf_counter() - started)
    print(f"new: {new_rate:.2f} items/s ({args.new_batches} batches of {args.batch}, 1 thread)", flush=True)
    result = {"old_items_per_s": round(old_rate, 3), "new_items_per_s": round(new_rate, 3),
              "ratio": round(new_rate / old_rate, 2), "batch": args.batch, "threads": 1}
    print(json.dumps(result) if args.json else f"new / old: {result['ratio']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
