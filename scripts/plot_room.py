"""One generated room beside pyroomacoustics' full image-source simulation of the same room (the
walls' reflection from ``roomgen.reflection_for_t60``): the first 100 ms at mic 0, and the energy
decay (Schroeder) curves, with DRR, C50 and the mid-band T60 of each; roomgen with one T60 for all
bands (as pyroomacoustics' frequency-flat walls) and with its default per-band T60.

    python scripts/plot_room.py --out results/room_vs_pyroomacoustics.png
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pyroomacoustics as pra
import torch
from pyroomacoustics.experimental.rt60 import measure_rt60
from scipy.signal import butter, sosfilt

from speechnorm.data.roomgen import RoomBatch, generate, reflection_for_t60

FS = 16_000


def measure(rir: np.ndarray, direct: float) -> dict[str, float]:
    d, rir = int(round(direct)), np.asarray(rir, np.float64)
    near = np.sum(rir[max(d - 16, 0) : d + 17] ** 2)
    bands = [sosfilt(butter(4, [f / 2**0.5, f * 2**0.5], "bandpass", fs=FS, output="sos"), rir) for f in (500, 1000)]
    return {"DRR": 10 * np.log10(near / (np.sum(rir**2) - near)),
            "C50": 10 * np.log10(np.sum(rir[: d + 800] ** 2) / np.sum(rir[d + 800 :] ** 2)),
            "T60": float(np.mean([measure_rt60(b, FS, decay_db=20) for b in bands]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/room_vs_pyroomacoustics.png")
    parser.add_argument("--t60", type=float, default=0.5)
    args = parser.parse_args(argv)
    size, centre, talker = np.array([6.0, 4.2, 3.0]), np.array([2.5, 2.0, 1.4]), np.array([4.5, 3.1, 1.6])
    angles = np.arange(4) * np.pi / 2
    mics = np.stack([centre[0] + 0.035 * np.cos(angles), centre[1] + 0.035 * np.sin(angles), np.full(4, centre[2])], 1)
    rooms = RoomBatch(torch.tensor(size)[None], torch.tensor([args.t60]), torch.tensor(talker)[None, None],
                      torch.tensor(mics)[None])
    ours = generate(rooms, torch.Generator().manual_seed(0), t60_shape=((1000.0, 1.0),))  # flat walls, as theirs
    shaped = generate(rooms, torch.Generator().manual_seed(0))  # the default: high bands decay faster
    beta = float(reflection_for_t60(rooms.size, rooms.t60)[0])
    order = int(math.ceil(1.5 * 343 * 1.2 * args.t60 * 0.5 * sum(1 / d for d in size)))
    room = pra.ShoeBox(size.tolist(), fs=FS, materials=pra.Material(1 - beta**2), max_order=order)
    room.add_microphone_array(mics.T)
    room.add_source(talker.tolist())
    room.compute_rir()
    theirs = np.asarray(room.rir[0][0][pra.constants.get("frac_delay_length") // 2 :])
    mine = ours.rir[0, 0, 0, : int(ours.length[0])].double().numpy()
    direct = float(ours.direct[0, 0, 0])
    scale = np.abs(theirs).max() / np.abs(mine).max()  # pyroomacoustics omits the 1/(4π) of the amplitude
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6))
    span = np.arange(int(0.1 * FS))
    top.plot(span / FS * 1000, theirs[span], lw=0.8, label="pyroomacoustics, full image sources")
    top.plot(span / FS * 1000, mine[span] * scale, lw=0.8, alpha=0.8, label="speechnorm roomgen (batched, flat walls)")
    top.axvspan((direct + 0.07 * FS) / FS * 1000, (direct + 0.09 * FS) / FS * 1000, color="grey", alpha=0.2,
                label="crossfade to the diffuse tail")
    top.set_xlabel("ms")
    top.set_title(f"6 x 4.2 x 3 m room, T60 {args.t60} s, mic 0 of a 4-mic 3.5 cm circle, talker 2.4 m away")
    top.legend(fontsize=8)
    for name, rir in (("pyroomacoustics", theirs), ("roomgen, one T60 for all bands", mine),
                      ("roomgen, default per-band T60", shaped.rir[0, 0, 0, : int(shaped.length[0])].double().numpy())):
        energy = np.cumsum(rir[::-1] ** 2)[::-1]
        values = measure(rir, direct)
        bottom.plot(np.arange(len(rir)) / FS, 10 * np.log10(energy / energy[0] + 1e-12), lw=1,
                    label=f"{name}: DRR {values['DRR']:.1f} dB, C50 {values['C50']:.1f} dB, T60 {values['T60']:.2f} s")
    bottom.set_ylim(-70, 2)
    bottom.set_xlim(0, 1.2 * args.t60 * 1.3)
    bottom.set_xlabel("s")
    bottom.set_ylabel("energy decay (dB)")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
