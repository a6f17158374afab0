"""Online Normalization as pure functions (Chiley et al., NeurIPS 2019, arXiv 1905.05894).

Everything here works on one *canonical* layout, whatever the module's stream axis:

    x: (P, C, L, D)   P independent streams, C features, L samples along each stream,
                      D components per sample and feature (bins, pixels; 1 for a vector)
    statistics: (P, C, L) per sample, (P, C) per stream state

Notation follows ../shared/ONLINE_NORM.md: forward decay ``alpha`` (α_f), backward decay
``alpha`` (α_b), running mean ``mu`` (μ), running variance ``var`` (σ²), control variables
``u`` (mean component) and ``v`` (component along y).

Structure (the "three passes"): a parallel reduction over D for the per-sample moments, a
log-depth scan of the small statistics sequences (``linear_scan``), then one parallel
elementwise pass. The backward has the same shape.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .scan import linear_scan, shift_in


class ForwardResult(NamedTuple):
    y: Tensor  # (P, C, L, D) normalized samples
    inv_std: Tensor  # (P, C, L) 1 / sqrt(σ²_{t-1} + eps): the scale each sample was normalized with
    mean_y: Tensor  # (P, C, L) mean_D(y_t), in closed form from the statistics
    mean_y2: Tensor  # (P, C, L) mean_D(y_t²), in closed form from the statistics
    mu: Tensor  # (P, C) μ after the last sample
    var: Tensor  # (P, C) σ² after the last sample


def require_finite(stats: Tensor, where: str) -> None:
    """Refuse non-finite input: one NaN would poison a running statistic for all later samples."""
    if not bool(torch.isfinite(stats).all()):
        raise ValueError(
            f"{where}: input contains NaN or inf (or values whose square overflows); a streaming "
            "normalizer would carry it into every later sample — clean or clip the input first"
        )


def sample_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample mean and biased variance over the components D (last axis), numerically stable."""
    var, mean = torch.var_mean(x, dim=-1, correction=0)
    return mean, var


def online_norm_fwd(x: Tensor, mu0: Tensor, var0: Tensor, alpha: float, eps: float) -> ForwardResult:
    """The forward tracking process over a whole stream.

    y_t  = (x_t - μ_{t-1}) / sqrt(σ²_{t-1} + eps)
    σ²_t = α σ²_{t-1} + (1-α) σ²(x_t) + α(1-α) (μ(x_t) - μ_{t-1})²
    μ_t  = α μ_{t-1} + (1-α) μ(x_t)

    Args:
        x: (P, C, L, D). mu0, var0: (P, C) state before the first sample.
    """
    mean_x, var_x = sample_moments(x)
    require_finite(mean_x + var_x, "OnlineNorm")
    mu = linear_scan(alpha, (1.0 - alpha) * mean_x, mu0)
    mu_prev = shift_in(mu0, mu)
    delta = mean_x - mu_prev
    var = linear_scan(alpha, (1.0 - alpha) * var_x + (alpha * (1.0 - alpha)) * delta.square(), var0)
    inv_std = torch.rsqrt(shift_in(var0, var) + eps)
    # y = x * inv_std - mu_prev * inv_std, in one fused pass.
    y = torch.addcmul((-mu_prev * inv_std).unsqueeze(-1), x, inv_std.unsqueeze(-1))
    mean_y = delta * inv_std
    mean_y2 = (var_x + delta.square()) * inv_std.square()
    return ForwardResult(y, inv_std, mean_y, mean_y2, mu[..., -1], var[..., -1])


def online_norm_bwd(
    grad_y: Tensor,
    y: Tensor,
    inv_std: Tensor,
    mean_y: Tensor,
    mean_y2: Tensor,
    alpha: float,
    u0: Tensor,
    v0: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward control process over a whole stream, in forward order.

    z_t  = g_t - (1-α) v_{t-1} y_t          v_t = v_{t-1} + mean_D(z_t y_t)
    w_t  = z_t / sqrt(σ²_{t-1} + eps)
    x'_t = w_t - (1-α) u_{t-1}              u_t = u_{t-1} + mean_D(x'_t)

    Substituting z_t shows both controls are linear recurrences over the (P, C, L) statistics:
    v_t = (1 - (1-α) mean_D(y_t²)) v_{t-1} + mean_D(g_t y_t) and u_t = α u_{t-1} + mean_D(w_t),
    with mean_D(w_t) = inv_std_t (mean_D(g_t) - (1-α) v_{t-1} mean_D(y_t)).

    Returns:
        grad_x (P, C, L, D), u and v after the last sample (P, C).
    """
    k = 1.0 - alpha
    mean_gy = torch.linalg.vecdot(grad_y, y, dim=-1) / y.shape[-1]
    mean_g = grad_y.mean(dim=-1)
    v = linear_scan(1.0 - k * mean_y2, mean_gy, v0)
    kv_prev = k * shift_in(v0, v)
    u = linear_scan(alpha, inv_std * (mean_g - kv_prev * mean_y), u0)
    ku_prev = k * shift_in(u0, u)
    # x' = inv_std * g - inv_std * k v_{t-1} * y - k u_{t-1}, in two fused passes.
    grad_x = torch.addcmul((-ku_prev).unsqueeze(-1), grad_y, inv_std.unsqueeze(-1))
    grad_x.addcmul_(y, (-kv_prev * inv_std).unsqueeze(-1))
    return grad_x, u[..., -1], v[..., -1]


def online_norm_step(x_t: Tensor, mu: Tensor, var: Tensor, alpha: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """One sample of the forward tracking process, written out directly (the streaming path).

    Args:
        x_t: (P, C, D). mu, var: (P, C).
    Returns:
        y_t (P, C, D), μ_t, σ²_t (P, C).
    """
    mean_x, var_x = sample_moments(x_t)
    require_finite(mean_x + var_x, "OnlineNorm.step")
    inv_std = torch.rsqrt(var + eps)
    y_t = (x_t - mu.unsqueeze(-1)) * inv_std.unsqueeze(-1)
    delta = mean_x - mu
    new_var = alpha * var + (1.0 - alpha) * var_x + alpha * (1.0 - alpha) * delta.square()
    new_mu = alpha * mu + (1.0 - alpha) * mean_x
    return y_t, new_mu, new_var


def layer_scaling_fwd(h: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor]:
    """out = h / sqrt(mean_dims(h²) + eps); returns out and 1/s (keepdim)."""
    count = 1
    for dim in dims:
        count *= h.shape[dim]
    sq_norm = torch.linalg.vector_norm(h, ord=2, dim=dims, keepdim=True).square()
    inv_s = torch.rsqrt(sq_norm / count + eps)
    return h * inv_s, inv_s


def layer_scaling_bwd(grad_out: Tensor, out: Tensor, inv_s: Tensor, dims: tuple[int, ...]) -> Tensor:
    """∂L/∂h = (g - mean_dims(g · out) · out) / s."""
    proj = (grad_out * out).mean(dim=dims, keepdim=True)
    return (grad_out - proj * out) * inv_s


def clamp_bwd(grad_out: Tensor, h: Tensor, limit: float) -> Tensor:
    """Gradient of clamp(h, -limit, limit): passed where |h| <= limit, zero where clamped."""
    return grad_out * (h.abs() <= limit)
