"""What cutting an utterance to an item's length does to its DNSMOS: the dry utterances of some
speakers scored whole and cut to ``--seconds`` (DNSMOS tiles a clip shorter than 9 s to 9 s).

    python scripts/dnsmos_crop_effect.py --speakers asterisk:june asterisk:ru --count 16 --seconds 3
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speechnorm.scoring import dnsmos


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech-dir", default=".cache/real_corpus/speech")
    parser.add_argument("--speakers", nargs="+", default=["asterisk:june", "asterisk:ru"])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(args.speech_dir)
    with open(folder / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle)
                if r["speaker"] in args.speakers and float(r["seconds"]) >= args.seconds + 0.2]
    if not rows:
        parser.error(f"no utterance of {args.speakers} is {args.seconds + 0.2} s or longer in {folder}")
    picks = [rows[i] for i in np.random.default_rng(args.seed).permutation(len(rows))[: args.count]]
    whole, cut = [], []
    for row in picks:
        audio, rate = sf.read(folder / row["file"], dtype="float32")
        whole.append(dnsmos(torch.from_numpy(audio), rate)["dnsmos_ovrl"])
        cut.append(dnsmos(torch.from_numpy(audio[: int(args.seconds * rate)]), rate)["dnsmos_ovrl"])
    print(f"{len(picks)} utterances of {', '.join(args.speakers)}:")
    print(f"  whole:          OVRL {np.mean(whole):.2f} ± {np.std(whole):.2f}")
    print(f"  first {args.seconds:g} s:   OVRL {np.mean(cut):.2f} ± {np.std(cut):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
