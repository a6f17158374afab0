"""Online Normalization as pure functions (Chiley et al., NeurIPS 2019, arXiv 1905.05894).

Everything here works on one *canonical* layout, whatever the module's stream axis:

    x: (P, C, L, D)   P independent streams, C features, L samples along each stream,
                      D components per sample and feature (bins, pixels; 1 for a vector)
    statistics: (P, C, L) per sample, (P, C) per stream state

Notation follows ../shared/ONLINE_NORM.md: forward decay ``alpha`` (α_f), backward decay
``alpha`` (α_b), running mean ``mu`` (μ), running variance ``var`` (σ²), control variables
``u`` (mean component) and ``v`` (component along y).

Structure (the "three passes"): a parallel reduction over D for the per-sample moments, a
scan of the small statistics sequences (``linear_scan``: O(L) work in about 2·sqrt(L) chunked
steps), then one parallel elementwise pass. The backward has the same shape. The affine
transform and layer scaling are
folded into that elementwise pass: the functions below compute, from small per-sample
statistics, the coefficients of ``out = x * scale + shift`` and of
``grad_x = g * cg + x * cx + c0``; the big tensors are touched only by reductions and one
fused multiply-add each way.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .scan import linear_scan, shift_in


def require_finite(stats: Tensor, where: str) -> None:
    """Refuse non-finite input: one NaN would poison a running statistic for all later samples.

    ``speechnorm.norm.finite.check``: at once on the CPU, without a host sync on CUDA (deferred to
    the next ``finite.raise_if_nonfinite``); skipped while tracing for export (the exported graph's
    caller, ``speechnorm.stream``, checks every hop before it enters the graph instead).
    """
    from .finite import check

    check(stats, where)


#: One-pass moments lose about eps * (mean/std)² of relative precision; rows where that could
#: exceed ~1e-5 of the variance are recomputed two-pass.
REFINE_RATIO = 50.0


def sample_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample mean and biased variance over the components D (last axis).

    One pass of two fast reductions (sum, sum of squares), then the rows whose mean dominates
    their spread (where E[x²] - E[x]² would cancel) are recomputed two-pass. Exact for D = 1.
    """
    count = x.shape[-1]
    if count == 1:
        mean = x[..., 0]
        return mean, torch.zeros_like(mean)
    mean = x.sum(dim=-1) / count
    var = (torch.linalg.vector_norm(x, ord=2, dim=-1).square() / count - mean.square()).clamp_min(0.0)
    suspect = (mean.square() > REFINE_RATIO * var).reshape(-1).nonzero().squeeze(1)
    if suspect.numel():
        rows = x.reshape(-1, count)[suspect]
        refined_var, refined_mean = torch.var_mean(rows, dim=-1, correction=0)
        var.view(-1)[suspect] = refined_var
        mean.view(-1)[suspect] = refined_mean
    return mean, var


class Tracking(NamedTuple):
    """The forward tracking process over a stream, canonical (P, C, L) / (P, C)."""

    mu_prev: Tensor  # μ_{t-1}: the mean each sample was normalized with
    var_prev: Tensor  # σ²_{t-1}
    mu_end: Tensor  # μ after the last sample
    var_end: Tensor  # σ² after the last sample


def track(mean_x: Tensor, var_x: Tensor, mu0: Tensor, var0: Tensor, alpha: float, scan=linear_scan) -> Tracking:
    """Scan the statistics of a stream given its per-sample moments:

    σ²_t = α σ²_{t-1} + (1-α) σ²(x_t) + α(1-α) (μ(x_t) - μ_{t-1})²
    μ_t  = α μ_{t-1} + (1-α) μ(x_t)

    ``scan`` solves the linear recurrences (``linear_scan`` or a device kernel).
    """
    mu = scan(alpha, (1.0 - alpha) * mean_x, mu0)
    mu_prev = shift_in(mu0, mu)
    var = scan(alpha, (1.0 - alpha) * var_x + (alpha * (1.0 - alpha)) * (mean_x - mu_prev).square(), var0)
    return Tracking(mu_prev, shift_in(var0, var), mu[..., -1], var[..., -1])


class Coefficients(NamedTuple):
    """The whole forward as one affine map per sample and feature: out = x * scale + shift."""

    scale: Tensor  # (P, C, L)
    shift: Tensor  # (P, C, L)
    inv_std: Tensor  # 1 / sqrt(σ²_{t-1} + eps)
    mean_y: Tensor  # mean_D(y_t), y_t = (x_t - μ_{t-1}) * inv_std
    mean_y2: Tensor  # mean_D(y_t²)
    inv_s: Tensor | None  # layer scaling's 1 / s_t, (P, 1, L); None without layer scaling


def forward_coefficients(
    mean_x: Tensor, var_x: Tensor, tracking: Tracking, weight: Tensor | None, bias: Tensor | None, eps: float, layer_scaling: bool
) -> Coefficients:
    """out = LS(γ y + β) with y = (x - μ_{t-1}) / sqrt(σ²_{t-1} + eps), in closed form.

    γ y + β is affine in x per sample and feature, and layer scaling divides a sample by
    s_t = sqrt(mean_{C,D}(h²) + eps) where mean_D(h²) = γ² inv_std² var(x_t) + (γ mean_D(y_t) + β)²:
    so the output needs only the per-sample moments and one elementwise pass.
    Canonical shapes (P, C, L); weight and bias (C,) or None (γ = 1, β = 0).
    """
    inv_std = torch.rsqrt(tracking.var_prev + eps)
    delta = mean_x - tracking.mu_prev
    mean_y = delta * inv_std
    mean_y2 = (var_x + delta.square()) * inv_std.square()
    gamma = 1.0 if weight is None else weight.view(1, -1, 1)
    beta = 0.0 if bias is None else bias.view(1, -1, 1)
    scale = gamma * inv_std
    shift = beta - scale * tracking.mu_prev
    inv_s = None
    if layer_scaling:
        mean_h2 = scale.square() * var_x + (gamma * mean_y + beta).square()
        inv_s = torch.rsqrt(mean_h2.mean(dim=1, keepdim=True) + eps)
        scale, shift = scale * inv_s, shift * inv_s
    return Coefficients(scale, shift, inv_std, mean_y, mean_y2, inv_s)


class Gradients(NamedTuple):
    """The whole backward as one affine map per sample and feature: grad_x = g * cg + x * cx + c0."""

    cg: Tensor  # (P, C, L)
    cx: Tensor
    c0: Tensor
    grad_weight: Tensor  # (C,)
    grad_bias: Tensor  # (C,)
    u_end: Tensor  # (P, C) control state after the last sample
    v_end: Tensor


def backward_coefficients(
    sum_g: Tensor,
    sum_gx: Tensor,
    count: int,
    mean_x: Tensor,
    var_x: Tensor,
    tracking: Tracking,
    coefficients: Coefficients,
    weight: Tensor | None,
    alpha: float,
    u0: Tensor,
    v0: Tensor,
    scan=linear_scan,
) -> Gradients:
    """The backward of ``forward_coefficients``: layer scaling's and the affine map's exact
    gradients, then the paper's control process on the normalization.

    Given g = ∂L/∂out reduced per sample to sum_D(g) and sum_D(g x) (canonical (P, C, L)):
      layer scaling   g_h = (g - mean_{C,D}(g out) out) / s              (exact)
      affine          g_y = γ g_h,  ∂L/∂γ = Σ g_h y,  ∂L/∂β = Σ g_h      (exact)
      control         z_t = g_y - (1-α) v_{t-1} y_t,   v_t = v_{t-1} + mean_D(z_t y_t)
                      x'_t = z_t inv_std_t - (1-α) u_{t-1},   u_t = u_{t-1} + mean_D(x'_t)
    Every term is affine in g and x per sample, so the gradient is one elementwise pass; the
    control variables obey linear recurrences over the small statistics:
      v_t = (1 - (1-α) mean_D(y_t²)) v_{t-1} + mean_D(g_y y_t),
      u_t = α u_{t-1} + inv_std_t (mean_D(g_y) - (1-α) v_{t-1} mean_D(y_t)).
    """
    sum_x = count * mean_x
    sum_x2 = count * (var_x + mean_x.square())
    if coefficients.inv_s is None:
        cg, cx, c0 = 1.0, 0.0, 0.0
        sum_gh, sum_ghx = sum_g, sum_gx
    else:
        sum_g_out = coefficients.scale * sum_gx + coefficients.shift * sum_g  # Σ_D g·out per feature
        proj = sum_g_out.sum(dim=1, keepdim=True) / (sum_g.shape[1] * count)
        cg, cx, c0 = coefficients.inv_s, -coefficients.inv_s * proj * coefficients.scale, -coefficients.inv_s * proj * coefficients.shift
        sum_gh = cg * sum_g + cx * sum_x + c0 * count
        sum_ghx = cg * sum_gx + cx * sum_x2 + c0 * sum_x
    sum_gh_y = coefficients.inv_std * (sum_ghx - tracking.mu_prev * sum_gh)  # Σ_D g_h·y
    gamma = 1.0 if weight is None else weight.view(1, -1, 1)
    k = 1.0 - alpha
    v = scan(1.0 - k * coefficients.mean_y2, gamma * sum_gh_y / count, v0)
    kv_prev = k * shift_in(v0, v)
    u = scan(alpha, coefficients.inv_std * (gamma * sum_gh / count - kv_prev * coefficients.mean_y), u0)
    ku_prev = k * shift_in(u0, u)
    # grad_x = inv_std γ g_h - (1-α) v_{t-1} inv_std² (x - μ_{t-1}) - (1-α) u_{t-1}
    outer = gamma * coefficients.inv_std
    damp = kv_prev * coefficients.inv_std.square()
    return Gradients(
        cg=outer * cg,
        cx=outer * cx - damp,
        c0=outer * c0 + damp * tracking.mu_prev - ku_prev,
        grad_weight=sum_gh_y.sum(dim=(0, 2)),
        grad_bias=sum_gh.sum(dim=(0, 2)),
        u_end=u[..., -1],
        v_end=v[..., -1],
    )


def online_norm_step(x_t: Tensor, mu: Tensor, var: Tensor, alpha: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """One sample of the forward tracking process, written out directly (the streaming path).

    Args:
        x_t: (P, C, D). mu, var: (P, C).
    Returns:
        y_t (P, C, D), μ_t, σ²_t (P, C).
    """
    if x_t.shape[-1] == 1:  # one component (recurrent features): its mean is itself, its variance zero
        delta = x_t.squeeze(-1) - mu
        require_finite(delta, "OnlineNorm.step")
        y_t = (delta * torch.rsqrt(var + eps)).unsqueeze(-1)
        return y_t, mu + (1.0 - alpha) * delta, alpha * (var + (1.0 - alpha) * delta.square())
    var_x, mean_x = torch.var_mean(x_t, dim=-1, correction=0)  # one frame: two-pass is cheap, and branch-free
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
