"""Bytes each OnlineNorm training call moves per element of x on the Triton path, traced in Triton's
interpreter on the CPU (``speechnorm.norm.kernels.traffic``), against BatchNorm's passes.

    TRITON_INTERPRET=1 python scripts/trace_bytes.py          # the recipe models' D values, bf16 and fp32

Per element of x: forward and backward bytes (kernel loads/stores as distinct addresses per
access, plus every torch op outside the kernels), BatchNorm's 3 + 5 passes for comparison, the
bytes saved for backward over x's, kernel launches, and host syncs in a forward + backward with the
finite check deferred (as on CUDA).
"""

from __future__ import annotations

import argparse
import os
import sys

if os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("trace_bytes.py runs the kernels in Triton's interpreter: TRITON_INTERPRET=1 python scripts/trace_bytes.py")

import torch  # noqa: E402

from speechnorm.norm import OnlineNorm  # noqa: E402
from speechnorm.norm.finite import finite_check  # noqa: E402
from speechnorm.norm.kernels import traffic  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def sample(width: int, dtype: torch.dtype) -> torch.Tensor:
    if width == 1:  # a GRU's output, (T, B, C) seen as (B, C, T), the recipe's T = 200
        return torch.randn(200, 4, 64).permute(1, 2, 0).to(dtype)
    return torch.randn(2, 16, 20, width).to(dtype)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[1, 21, 41, 81, 161, 257])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    args = parser.parse_args(argv)
    print("| dtype | D | forward B/el | × BatchNorm | backward B/el | × BatchNorm | saved / x | launches fwd+bwd "
          "| host syncs |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.dtypes:
        for width in args.widths:
            x = sample(width, DTYPES[name])
            with finite_check("deferred"):
                t = traffic.layer_traffic(OnlineNorm(x.shape[1], stream_axis="time"), x)
            per = t.per_element()
            bn = traffic.batchnorm_bytes(x.element_size())
            print(f"| {name} | {width} | {per['forward']:.2f} | {per['forward'] / bn['forward']:.2f} "
                  f"| {per['backward']:.2f} | {per['backward'] / bn['backward']:.2f} | {per['saved_over_x']:.2f} "
                  f"| {t.forward.launches}+{t.backward.launches} | {len(t.forward.syncs) + len(t.backward.syncs)} |")


if __name__ == "__main__":
    main()
