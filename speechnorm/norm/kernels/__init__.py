"""Backends for Online Norm's big-tensor passes: the vectorised torch path and Triton kernels.

CUDA tensors use the Triton kernels, CPU tensors the torch path, except one-component samples
(D = 1: recurrent and fully connected features) on the CPU, which run as one compiled loop each
way (``cpu_d1``, numba; ``fused_d1``). ``use_backend`` overrides the choice, for tests and
comparisons (``"torch"`` also turns the compiled D = 1 loop off):

    with use_backend("triton"):   # also on CPU tensors, with TRITON_INTERPRET=1
        ...

Both backends provide the same five operations (see ``triton_ops``); the math on the small
per-sample statistics (``speechnorm.norm.functional``) is shared.
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

    return SimpleNamespace(
        name="triton",
        moments=triton_ops.moments,
        affine=triton_ops.affine,
        grad_moments=triton_ops.grad_moments,
        grad_affine=triton_ops.grad_affine,
        scan=triton_ops.scan,
    )


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


def fused_d1(x: Tensor) -> bool:
    """Run Online Norm on ``x`` — one-component samples, canonical (P, C, L) — as the compiled
    CPU loop (``cpu_d1``)? Yes on the CPU under the automatic choice, when numba is installed and
    no tracer (ONNX export) is recording the graph."""
    if _choice != "auto" or x.is_cuda or x.device.type != "cpu" or torch.jit.is_tracing():
        return False
    from . import cpu_d1

    return cpu_d1.available()


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
