"""Online Norm for one-component features (D = 1) on the CPU: one compiled pass each way.

Recurrent and fully connected features (B, C, T) have one component per sample, so a sample's
moments are the sample itself and every per-sample "statistic" is as large as the data. The
general three-pass path (moments, scans, elementwise) then moves dozens of full-size tensors
through memory per layer. Here the whole layer is one loop each way, compiled by numba:

forward, per stream p, frame by frame; per feature c (``forward_d1``)
    d = x_t − μ;  h_t = γ d / sqrt(σ² + ε) + β;  μ += (1 − α_f) d;  σ² = α_f (σ² + (1 − α_f) d²)
    out_t = h_t / sqrt(mean_c(h_t²) + ε)       (layer scaling over the frame's features, if on)

backward, the paper's control process in the same order, recomputing μ, σ², y and h from x on
the fly, so nothing but x is saved (``backward_d1``); given g = ∂L/∂out:
    g_h = (g − mean_c(g·out) out) / s   (layer scaling's exact gradient; g_h = g without it)
    g_y = γ g_h;  z = g_y − k v y;  v += z y;  x' = z / sqrt(σ² + ε) − k u;  u += x'   (k = 1 − α_b)
and, for the affine parameters, Σ_t g_h y_t and Σ_t g_h per stream and feature.

Each frame's features form the inner loop, which the compiler vectorises when they are
contiguous in memory. The models' layers give exactly that (a GRU's output is (T, B, C) in
memory, a pointwise layer's (B, T, C)); a time-contiguous (B, C, T) input is transposed through a
small tile buffer, 16 frames at a time. Arithmetic runs in the data's dtype, as the general
path's statistics do for D = 1; the sums over time for γ's and β's gradients accumulate in
float64. Streams run in parallel (``numba.prange``).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from torch import Tensor

# Layouts the kernels read: the kernel's C-contiguous view of (P, C, L) is (P, L, C), (L, P, C)
# or (P, C, L) itself (kept in step with cpu_d1_loops).
STREAM_FIRST, TIME_FIRST, TIME_CONTIGUOUS = 0, 1, 2


def available() -> bool:
    """numba is importable (it comes with the training install)."""
    return importlib.util.find_spec("numba") is not None


def _kernels():
    """The compiled loops (compiled on first use, then cached on disk by numba)."""
    from . import cpu_d1_loops

    return cpu_d1_loops.forward, cpu_d1_loops.backward


def _threads() -> None:
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


# (P, C, L) -> the kernel's C-contiguous view, and back
_TO_VIEW = {STREAM_FIRST: (0, 2, 1), TIME_FIRST: (2, 0, 1), TIME_CONTIGUOUS: (0, 1, 2)}
_FROM_VIEW = {STREAM_FIRST: (0, 2, 1), TIME_FIRST: (1, 2, 0), TIME_CONTIGUOUS: (0, 1, 2)}


def _layout(x: Tensor) -> tuple[int, Tensor]:
    """x (P, C, L) as a C-contiguous tensor the kernels read, and which layout that is; a layout
    they do not read is copied to (P, L, C) first."""
    for layout, order in _TO_VIEW.items():
        view = x.permute(order)
        if view.is_contiguous():
            return layout, view
    return STREAM_FIRST, x.permute(_TO_VIEW[STREAM_FIRST]).contiguous()


def _view(t: Tensor, layout: int) -> Tensor:
    """t (P, C, L) in the kernel layout ``layout`` (a copy only when t is laid out otherwise)."""
    return t.permute(_TO_VIEW[layout]).contiguous()


def _like(layout: int, view: Tensor) -> tuple[Tensor, np.ndarray]:
    """A new tensor (P, C, L) with the kernel layout ``layout``, and the array the kernel writes."""
    fresh = torch.empty_like(view)  # view is contiguous: so is fresh
    return fresh.permute(_FROM_VIEW[layout]), fresh.numpy()


def _state(t: Tensor, streams: int, channels: int, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to(dtype).expand(streams, channels).contiguous().numpy()


def _params(weight: Tensor | None, bias: Tensor | None, channels: int, dtype: torch.dtype):
    gamma = torch.ones(channels, dtype=dtype) if weight is None else weight.detach().to(dtype)
    beta = torch.zeros(channels, dtype=dtype) if bias is None else bias.detach().to(dtype)
    return gamma.contiguous().numpy(), beta.contiguous().numpy()


def _constants(dtype: torch.dtype, alpha_fwd: float, eps: float, alpha_bkw: float = 0.0) -> np.ndarray:
    """The scalars in the data's dtype, so no float64 literal widens the loops."""
    return torch.tensor([alpha_fwd, 1.0 - alpha_fwd, eps, 1.0, 0.0, 1.0 - alpha_bkw], dtype=dtype).numpy()


def forward_d1(x: Tensor, weight, bias, mu0: Tensor, var0: Tensor, alpha: float, eps: float, layer_scaling: bool):
    """out = LS(γ · OnlineNorm(x) + β) for x (P, C, L) float32 or float64, any strides, and the
    end statistics (μ, σ²) as (P, C) in x's dtype. Layer scaling is over C per (p, t). Raises
    ``ValueError`` on non-finite input."""
    forward, _ = _kernels()
    _threads()
    streams, channels, _ = x.shape
    layout, view = _layout(x.detach())
    out, out_array = _like(layout, view)
    mu_end = torch.empty(streams, channels, dtype=x.dtype)
    var_end = torch.empty_like(mu_end)
    gamma, beta = _params(weight, bias, channels, x.dtype)
    bad = forward(view.numpy(), layout, gamma, beta, _state(mu0, streams, channels, x.dtype),
                  _state(var0, streams, channels, x.dtype), _constants(x.dtype, alpha, eps), bool(layer_scaling),
                  out_array, mu_end.numpy(), var_end.numpy())
    if bad:
        raise ValueError(
            "OnlineNorm: input contains NaN or inf; a streaming normalizer would carry it into every later "
            "sample — clean or clip the input first"
        )
    return out, mu_end, var_end


def backward_d1(x: Tensor, grad_out: Tensor, weight, bias, mu0: Tensor, var0: Tensor, u0: Tensor, v0: Tensor,
                alpha_fwd: float, alpha_bkw: float, eps: float, layer_scaling: bool):
    """The backward of ``forward_d1`` from x and ∂L/∂out alone (the forward is recomputed on the
    fly): ∂L/∂x (x's dtype), Σ_t g_h·y and Σ_t g_h per stream and feature (P, C; g_h =
    ∂L/∂(γy + β); float64), and the end control state (u, v) in x's dtype."""
    _, backward = _kernels()
    _threads()
    streams, channels, _ = x.shape
    layout, view = _layout(x.detach())
    grad_x, grad_array = _like(layout, view)
    grad_view = _view(grad_out.to(x.dtype), layout)  # read both in one order
    sums = torch.empty(2, streams, channels, dtype=torch.float64)
    control = torch.empty(2, streams, channels, dtype=x.dtype)
    gamma, beta = _params(weight, bias, channels, x.dtype)
    backward(view.numpy(), grad_view.numpy(), layout, gamma, beta,
             *(_state(s, streams, channels, x.dtype) for s in (mu0, var0, u0, v0)),
             _constants(x.dtype, alpha_fwd, eps, alpha_bkw), bool(layer_scaling), grad_array,
             sums[0].numpy(), sums[1].numpy(), control[0].numpy(), control[1].numpy())
    return grad_x, sums[0], sums[1], control[0], control[1]
