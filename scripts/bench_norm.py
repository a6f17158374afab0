"""Forward+backward time of OnlineNorm against BatchNorm, LayerNorm and the per-sample reference loop.

    python scripts/bench_norm.py                 # CPU, the issue's two sizes
    python scripts/bench_norm.py --device cuda   # on a GPU machine
    python scripts/bench_norm.py --quick         # small sizes, a smoke run
    python scripts/bench_norm.py --device cuda --backend torch   # the torch path on the GPU

Prints a markdown table of medians and the ratio of each row to BatchNorm on the same tensor. On
CUDA it adds OnlineNorm's achieved bandwidth: the bytes its fwd+bwd must move at least (read x
three times and write out in forward, read g and x twice and write grad_x in backward: 9 tensor
passes) over the time, and that as a share of the card's peak where the card is known.
The reference loop is the tests' truth (tests/reference), looping over the stream and
vectorised over everything else; it runs the normalization core only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference.online_norm import control_loop, forward_loop  # noqa: E402

from speechnorm.models.speed import median_seconds  # noqa: E402
from speechnorm.norm import OnlineNorm  # noqa: E402
from speechnorm.norm.kernels import triton_available, use_backend  # noqa: E402

PEAK_BANDWIDTH_GBS = {"H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H200": 4800, "A100-SXM4-80GB": 2039}
MIN_PASSES = 9  # see the module docstring


def peak_bandwidth(name: str) -> float | None:
    return next((gbs for key, gbs in PEAK_BANDWIDTH_GBS.items() if key in name), None)


def fwd_bwd(module, x, grad):
    def run():
        x.grad = None
        module(x).backward(grad)

    return run


def reference_fwd_bwd(stream, grad, alpha_fwd=0.999, alpha_bkw=0.99, eps=1e-5):
    """The reference loop on a stream (L, C', D), float32, core only."""
    channels = stream.shape[1]
    zeros = torch.zeros(channels, device=stream.device)

    def run():
        y, var_before, _, _ = forward_loop(stream, zeros, zeros + 1, alpha_fwd, eps)
        control_loop(grad, y, var_before, alpha_bkw, eps, zeros, zeros)

    return run


def cases(quick):
    """(axis, shape): a conv feature map, a spectrogram-shaped sequence, and a recurrent model's
    frame vectors (D = 1, a long stream), where a per-sample loop pays most."""
    if quick:
        return [("batch", (16, 32, 8, 8)), ("time", (2, 16, 50, 33)), ("time", (4, 32, 200))]
    return [("batch", (64, 128, 32, 32)), ("time", (8, 64, 400, 257)), ("time", (16, 256, 2000))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small tensors (a smoke run)")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference loop")
    parser.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto",
                        help="OnlineNorm's backend (auto: Triton on CUDA, torch on CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    if args.backend == "triton" and not triton_available():
        parser.error("--backend triton needs a CUDA device (or TRITON_INTERPRET=1, which times the interpreter)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# OnlineNorm fwd+bwd, {name}, torch {torch.__version__}, float32, median of {args.repeats}, "
          f"backend {args.backend}\n")
    print("| axis | shape | layer | ms | × BatchNorm |")
    print("|---|---|---|---:|---:|")
    for axis, shape in cases(args.quick):
        channels = shape[1]
        x = torch.randn(shape, device=device).requires_grad_(True)
        grad = torch.randn(shape, device=device)
        batchnorm = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(channels).to(device)
        bn_label = "BatchNorm2d" if len(shape) == 4 else "BatchNorm1d"
        layer_dims = shape[1:] if axis == "batch" else shape[-1:]
        rows = [
            (bn_label, fwd_bwd(batchnorm, x, grad)),
            (f"LayerNorm over {list(layer_dims)}", fwd_bwd(nn.LayerNorm(layer_dims).to(device), x, grad)),
            ("OnlineNorm core (affine, no ECM)", fwd_bwd(OnlineNorm(channels, ecm=None, stream_axis=axis).to(device), x, grad)),
            ("OnlineNorm + layer scaling", fwd_bwd(OnlineNorm(channels, ecm="ls", stream_axis=axis).to(device), x, grad)),
        ]
        if not args.no_reference:
            if axis == "batch":  # one stream of N samples, D = H*W
                stream = x.detach().reshape(shape[0], channels, -1)
            else:  # B*C independent streams over T, D = F: (T, B*C, F)
                frames = x.detach() if len(shape) == 4 else x.detach().unsqueeze(-1)
                stream = frames.permute(2, 0, 1, 3).reshape(shape[2], shape[0] * channels, frames.shape[3])
            rows.append(("reference loop (core)", reference_fwd_bwd(stream, torch.randn_like(stream))))
        with use_backend(args.backend):
            times = {label: median_seconds(run, device, args.repeats) for label, run in rows}
        base = times[rows[0][0]]
        for label, seconds in times.items():
            print(f"| {axis} | {tuple(shape)} | {label} | {seconds * 1e3:.1f} | {seconds / base:.2f} |")
        if device.type == "cuda":
            gbs = MIN_PASSES * x.numel() * x.element_size() / times["OnlineNorm + layer scaling"] / 1e9
            peak = peak_bandwidth(name)
            share = f"{100 * gbs / peak:.0f} % of {peak} GB/s peak" if peak else "peak unknown"
            print(f"| {axis} | {tuple(shape)} | OnlineNorm + LS achieved bandwidth | {gbs:.0f} GB/s | {share} |")
        if not args.no_reference:
            core = times["OnlineNorm core (affine, no ECM)"]
            print(f"| {axis} | {tuple(shape)} | reference loop / OnlineNorm core | | {times['reference loop (core)'] / core:.1f}× slower |")
        del x, grad


if __name__ == "__main__":
    main()
