"""Forward+backward time of OnlineNorm against BatchNorm, LayerNorm and the per-sample reference loop.

    python scripts/bench_norm.py                 # CPU, the issue's two sizes
    python scripts/bench_norm.py --device cuda   # on a GPU: the recipe models' norm shapes, fp32 and bf16,
                                                 # bandwidth against cuDNN BatchNorm, then a training step
                                                 # of each recipe model (scripts/bench_train_step.py)
    python scripts/bench_norm.py --quick         # small sizes, a smoke run
    python scripts/bench_norm.py --device cuda --backend torch   # the torch path on the GPU

Prints a markdown table of medians and the ratio of each row to BatchNorm on the same tensor.
``--recipe`` (the default on CUDA) times the shapes and memory layouts the recipe models actually
pass to their normalizers (read by hooks from a forward of TAC-GRU and TAC-CRN at batch 8 x 4 mics
x 2 s), each as BatchNorm would see it too. On CUDA it adds the achieved bandwidth of BatchNorm and
OnlineNorm: the bytes each must move at least over the time — BatchNorm 8 passes over x (3
forward, 5 backward); OnlineNorm the same for D > 1 and 5 for one-component features (2 forward:
read x, write out; 3 backward: read x and g, write ∂L/∂x), the passes its Triton kernels make
(``scripts/trace_bytes.py`` counts them) — and that as a share of the card's peak where known.
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
BATCHNORM_PASSES = 8  # see the module docstring


def online_norm_passes(shape) -> int:
    return 5 if len(shape) == 3 else 8


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
    """(axis, shape, strides or None): a conv feature map, a spectrogram-shaped sequence, and a
    recurrent model's frame vectors (D = 1, a long stream), where a per-sample loop pays most."""
    if quick:
        return [("batch", (16, 32, 8, 8), None), ("time", (2, 16, 50, 33), None), ("time", (4, 32, 200), None)]
    return [("batch", (64, 128, 32, 32), None), ("time", (8, 64, 400, 257), None), ("time", (16, 256, 2000), None)]


def recipe_cases(batch=8, mics=4, seconds=2.0):
    """The (shape, strides) every OnlineNorm of the recipe models receives in training, distinct."""
    from speechnorm.models import build

    seen = []
    for name in ("tac_gru", "tac_crn"):
        model = build(name, norm="online", size="small")
        hooks = [m.register_forward_hook(lambda m, inp, out: seen.append((tuple(inp[0].shape), inp[0].stride())))
                 for m in model.modules() if isinstance(m, OnlineNorm)]
        with torch.no_grad():
            model(torch.zeros(batch, mics, int(seconds * 16000)))
        for hook in hooks:
            hook.remove()
    distinct = list(dict.fromkeys(seen))
    return [("time", shape, stride) for shape, stride in distinct]


def make_input(shape, strides, device, dtype):
    if strides is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.empty_strided(shape, strides, device=device, dtype=dtype).normal_()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="small tensors (a smoke run)")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow reference loop")
    parser.add_argument("--backend", choices=("auto", "torch", "triton"), default="auto",
                        help="OnlineNorm's backend (auto: Triton on CUDA, torch on CPU)")
    parser.add_argument("--recipe", action=argparse.BooleanOptionalAction, default=None,
                        help="the recipe models' norm shapes and layouts (default: on CUDA)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=("fp32", "bf16", "fp16"),
                        help="data types to time (default: fp32, and bf16 on CUDA)")
    parser.add_argument("--train-step", action=argparse.BooleanOptionalAction, default=None,
                        help="then a training step of each recipe model, online vs batch (default: on CUDA)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    if args.backend == "triton" and not triton_available():
        parser.error("--backend triton needs a CUDA device (or TRITON_INTERPRET=1, which times the interpreter)")
    recipe = cuda if args.recipe is None else args.recipe
    dtypes = args.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"# OnlineNorm fwd+bwd, {name}, torch {torch.__version__}, median of {args.repeats}, backend {args.backend}\n")
    print("| dtype | axis | shape | layer | ms | × BatchNorm |")
    print("|---|---|---|---|---:|---:|")
    chosen = (recipe_cases() if recipe else []) + ([] if recipe and not args.quick else cases(args.quick))
    for dtype_name in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
        for axis, shape, strides in chosen:
            channels = shape[1]
            x = make_input(shape, strides, device, dtype).requires_grad_(True)
            grad = torch.randn(shape, device=device, dtype=dtype)
            batchnorm = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(channels).to(device)
            bn_label = "BatchNorm2d" if len(shape) == 4 else "BatchNorm1d"
            layer_dims = shape[1:] if axis == "batch" else shape[-1:]
            rows = [
                (bn_label, fwd_bwd(batchnorm, x, grad)),
                (f"LayerNorm over {list(layer_dims)}", fwd_bwd(nn.LayerNorm(layer_dims).to(device), x, grad)),
                ("OnlineNorm core (affine, no ECM)", fwd_bwd(OnlineNorm(channels, ecm=None, stream_axis=axis).to(device), x, grad)),
                ("OnlineNorm + layer scaling", fwd_bwd(OnlineNorm(channels, ecm="ls", stream_axis=axis).to(device), x, grad)),
            ]
            if dtype != torch.float32:  # BatchNorm/LayerNorm in half precision as autocast would run them
                rows = [(label, run) for label, run in rows if label.startswith("OnlineNorm")]
                rows.insert(0, (bn_label, autocast_fwd_bwd(batchnorm, x, grad, device)))
            reference = not args.no_reference and dtype == torch.float32 and not cuda
            if reference:
                if axis == "batch":  # one stream of N samples, D = H*W
                    stream = x.detach().reshape(shape[0], channels, -1)
                else:  # B*C independent streams over T, D = F: (T, B*C, F)
                    frames = x.detach() if len(shape) == 4 else x.detach().unsqueeze(-1)
                    stream = frames.permute(2, 0, 1, 3).reshape(shape[2], shape[0] * channels, frames.shape[3])
                rows.append(("reference loop (core)", reference_fwd_bwd(stream, torch.randn_like(stream))))
            with use_backend(args.backend):
                times = {label: median_seconds(run, device, args.repeats) for label, run in rows}
            base = times[rows[0][0]]
            where = f"| {dtype_name} | {axis} | {tuple(shape)}{'' if x.is_contiguous() else ' strided'} |"
            for label, seconds in times.items():
                print(f"{where} {label} | {seconds * 1e3:.3f} | {seconds / base:.2f} |")
            if cuda:
                peak = peak_bandwidth(name)
                for label, passes in ((bn_label, BATCHNORM_PASSES), ("OnlineNorm + layer scaling", online_norm_passes(shape))):
                    gbs = passes * x.numel() * x.element_size() / times[label] / 1e9
                    share = f"{100 * gbs / peak:.0f} % of {peak} GB/s" if peak else "peak unknown"
                    print(f"{where} {label}: {passes} passes, achieved | {gbs:.0f} GB/s | {share} |")
            if reference:
                core = times["OnlineNorm core (affine, no ECM)"]
                print(f"{where} reference loop / OnlineNorm core | | {times['reference loop (core)'] / core:.1f}× slower |")
            del x, grad
    if args.train_step if args.train_step is not None else cuda:
        print()
        import bench_train_step

        bench_train_step.main(["--device", args.device, "--norms", "batch", "online", "--batch", "8", "--mics", "4",
                               "--repeats", str(args.repeats)])


def autocast_fwd_bwd(module, x, grad, device):
    def run():
        x.grad = None
        with torch.autocast(device.type, dtype=x.dtype):
            out = module(x)
        out.backward(grad.to(out.dtype))

    return run


if __name__ == "__main__":
    main()
