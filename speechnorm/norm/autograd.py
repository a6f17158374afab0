"""autograd Functions wiring the pure math of ``functional`` into torch's graph.

The normalization core gets the paper's control process as its backward (not autograd through the
running statistics); layer scaling and clamping get their exact backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import functional as fn

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class OnlineNormCore(torch.autograd.Function):
    """x (P, C, L, D) -> y (P, C, L, D), plus the final (μ, σ²) as non-differentiable outputs.

    ``control`` is ``None`` (each stream's (u, v) starts at zero and is discarded, the time
    axis) or a (2, P, C) tensor holding (u, v) that the backward continues from and overwrites in
    place when it finishes (the batch axis, where the control state persists across calls). That
    in-place write is the only side effect, and it is visible in the signature.
    Statistics are computed in float32 at least; y is returned in x's dtype.
    """

    @staticmethod
    def forward(ctx, x, mu0, var0, control, alpha_fwd, alpha_bkw, eps):
        compute = x.float() if x.dtype in _LOW_PRECISION else x
        res = fn.online_norm_fwd(compute, mu0.to(compute.dtype), var0.to(compute.dtype), alpha_fwd, eps)
        ctx.save_for_backward(res.y, res.inv_std, res.mean_y, res.mean_y2)
        ctx.control = control
        ctx.alpha_bkw = alpha_bkw
        ctx.input_dtype = x.dtype
        mu, var = res.mu, res.var
        ctx.mark_non_differentiable(mu, var)
        return res.y.to(x.dtype), mu, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_mu, _grad_var):
        y, inv_std, mean_y, mean_y2 = ctx.saved_tensors
        control = ctx.control
        if control is None:
            u0 = v0 = inv_std.new_zeros(inv_std.shape[:-1])
        else:
            u0, v0 = control[0].to(inv_std.dtype), control[1].to(inv_std.dtype)
        grad_x, u, v = fn.online_norm_bwd(grad_y.to(y.dtype), y, inv_std, mean_y, mean_y2, ctx.alpha_bkw, u0, v0)
        if control is not None:
            control[0].copy_(u)
            control[1].copy_(v)
        return grad_x.to(ctx.input_dtype), None, None, None, None, None, None


class LayerScaling(torch.autograd.Function):
    """out = h / sqrt(mean over ``dims`` of h² + eps), with its exact backward."""

    @staticmethod
    def forward(ctx, h: Tensor, dims: tuple[int, ...], eps: float):
        out, inv_s = fn.layer_scaling_fwd(h, dims, eps)
        ctx.save_for_backward(out, inv_s)
        ctx.dims = dims
        return out

    @staticmethod
    def backward(ctx, grad_out):
        out, inv_s = ctx.saved_tensors
        return fn.layer_scaling_bwd(grad_out, out, inv_s, ctx.dims), None, None


class ActivationClamp(torch.autograd.Function):
    """clamp(h, -limit, limit); the gradient is zero where the value was clamped."""

    @staticmethod
    def forward(ctx, h: Tensor, limit: float):
        ctx.save_for_backward(h)
        ctx.limit = limit
        return h.clamp(-limit, limit)

    @staticmethod
    def backward(ctx, grad_out):
        (h,) = ctx.saved_tensors
        return fn.clamp_bwd(grad_out, h, ctx.limit), None
