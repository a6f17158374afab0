"""Backends for Online Norm: the vectorised torch path, compiled CPU loops and Triton kernels.

CUDA tensors use the Triton kernels (``triton_ops``: the whole layer in a few fused passes), CPU
tensors the torch path, except one-component samples (D = 1: recurrent and fully connected
features) on the CPU, which run as one compiled loop each way (``cpu_d1``, numba; see
``d1_kernels``). ``use_backend`` overrides the choice, for tests and comparisons (``"torch"``
also turns the compiled D = 1 loop off):

    with use_backend("triton"):   # also on CPU tensors, with TRITON_INTERPRET=1
        ...

The torch backend provides four operations on the big tensors (moments, affine, grad_moments,
grad_affine) and the scan of the small statistics, with the math on the statistics in
``speechnorm.norm.functional``; the Triton backend runs the whole layer each way
(``triton_ops.forward``/``backward``), the statistics' math fused into its kernels.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from types import SimpleNamespace

import torch
from torch import Tensor

from ..functional import sample_moments
from ..scan import linear_scan

BACKENDS = ("auto", "torch", "triton")
_choice = "auto"


def _torch_grad_affine(grad: Tensor, x: Tensor, cg: Tensor, cx: Tensor, c0: Tensor, dtype: torch.dtype) -> Tensor:
    out = torch.addcmul(c0.unsqueeze(-1).to(x.dtype), grad, cg.unsqueeze(-1).to(x.dtype))
    return out.addcmul_(x, cx.unsqueeze(-1).to(x.dtype)).to(dtype)


TORCH = SimpleNamespace(
    name="torch",
    moments=sample_moments,
    affine=lambda x, scale, shift: torch.addcmul(shift.unsqueeze(-1).to(x.dtype), x, scale.unsqueeze(-1).to(x.dtype)),
    grad_moments=lambda grad, x: (grad.sum(dim=-1), torch.einsum("...d,...d->...", grad, x)),
    grad_affine=_torch_grad_affine,
    scan=linear_scan,
)


def triton_available() -> bool:
    """Triton is importable and can run here: a CUDA device, or the interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _triton_backend() -> SimpleNamespace:
    from . import triton_ops

    return SimpleNamespace(name="triton", forward=triton_ops.forward, backward=triton_ops.backward,
                           forward_d1=triton_ops.forward_d1, backward_d1=triton_ops.backward_d1)


def backend_for(x: Tensor) -> SimpleNamespace:
    """The backend that handles tensor ``x`` under the current choice. The kernels take fp32,
    bf16 and fp16; float64 tensors always use the torch path."""
    if _choice == "torch" or (_choice == "auto" and not x.is_cuda) or x.dtype == torch.float64:
        return TORCH
    if not triton_available():
        if _choice == "triton":
            raise RuntimeError(
                "the Triton backend was asked for, but Triton cannot run here: it needs a CUDA device, "
                "or TRITON_INTERPRET=1 set before speechnorm is imported"
            )
        return TORCH
    return _triton_backend()


def d1_kernels(x: Tensor):
    """The module that runs Online Norm on ``x`` — one-component samples, canonical (P, C, L) — as
    one kernel each way, or None for the general path: the Triton kernels wherever the Triton
    backend handles x (``triton_ops.forward_d1``), the compiled CPU loop (``cpu_d1``) on the CPU
    under the automatic choice when numba is installed; None while a tracer (ONNX export) records
    the graph."""
    if torch.jit.is_tracing():
        return None
    if backend_for(x).name == "triton":
        from . import triton_ops

        return triton_ops
    if _choice != "auto" or x.device.type != "cpu":
        return None
    from . import cpu_d1

    return cpu_d1 if cpu_d1.available() else None


@contextlib.contextmanager
def use_backend(name: str):
    """Force a backend (``"torch"`` or ``"triton"``) inside the block; ``"auto"`` by device."""
    global _choice
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    previous, _choice = _choice, name
    try:
        yield
    finally:
        _choice = previous
