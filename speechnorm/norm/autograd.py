"""autograd Functions wiring the pure math of ``functional`` into torch's graph.

The normalization core gets the paper's control process as its backward (not autograd through the
running statistics); layer scaling and clamping get their exact backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import functional as fn
from . import finite
from .kernels import backend_for

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def stat_dtype(x: Tensor) -> torch.dtype:
    """The dtype of the per-sample statistics and the algebra on them.

    float64 when a sample has several components: the algebra uses E[x²] = var + mean², which
    float32 would round away for features riding on a large offset, and the statistics are D
    times smaller than the data, so float64 costs little. With one component per sample
    (recurrent features, (B, C, T)) there is no such cancellation and the statistics are as
    large as the data, so they stay in float32 (or the input's float64).
    """
    return torch.float64 if x.shape[-1] > 1 or x.dtype == torch.float64 else torch.float32


def _to_canonical(stats: Tensor, layout: str, dtype: torch.dtype) -> Tensor:
    """Per-sample statistics in the input's layout -> canonical (P, C, L)."""
    stats = stats.to(dtype)
    return stats if layout == "time" else stats.transpose(0, 1).unsqueeze(0)


def _to_native(coeff: Tensor, layout: str) -> Tensor:
    """Canonical (P, C, L) per-sample coefficients -> the input's per-sample layout."""
    return coeff if layout == "time" else coeff[0].transpose(0, 1)


class OnlineNormFunction(torch.autograd.Function):
    """Online Norm with its affine transform and (optionally) layer scaling, fused.

    Inputs: x in one of two layouts — ``"time"``: (P, C, L, D), P streams over L samples;
    ``"batch"``: (N, C, D), one stream over the N samples. ``weight``/``bias`` (C,) or None;
    ``mu0``/``var0`` (P, C) the statistics before the first sample; ``control`` ``None`` (each
    stream's control (u, v) starts at zero and is discarded: the time axis) or a (2, P, C) tensor
    of (u, v) that the backward continues from and overwrites in place when it finishes (the
    batch axis, where the control state persists across calls — the only side effect, and it is
    in the signature).

    Returns out (x's shape and dtype) and the end statistics (μ, σ²) as (P, C) in ``stat_dtype``,
    non-differentiable. Memory: saves x and per-sample statistics only, like BatchNorm.
    The big-tensor passes run on the backend for x's device (``speechnorm.norm.kernels``);
    autocast is off inside: the Function keeps its statistics in fp32 or fp64 itself.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mu0, var0, control, layout, alpha_fwd, alpha_bkw, eps, layer_scaling):
        ops = backend_for(x)
        param_dtypes = tuple(None if p is None else p.dtype for p in (weight, bias))
        if ops.name == "triton":
            return _triton_forward(ctx, x, weight, bias, mu0, var0, control, layout, alpha_fwd, alpha_bkw, eps,
                                   layer_scaling, param_dtypes)
        ctx.triton = False
        with torch.autocast(x.device.type, enabled=False):
            compute = x.float() if x.dtype in _LOW_PRECISION else x.contiguous()
            mean_x, var_x = ops.moments(compute)
            fn.require_finite(mean_x + var_x, "OnlineNorm")
            dtype = stat_dtype(compute)
            mean_x, var_x = _to_canonical(mean_x, layout, dtype), _to_canonical(var_x, layout, dtype)
            params = [None if p is None else p.detach().to(dtype) for p in (weight, bias)]
            tracking = fn.track(mean_x, var_x, mu0.to(dtype), var0.to(dtype), alpha_fwd, scan=ops.scan)
            coefficients = fn.forward_coefficients(mean_x, var_x, tracking, params[0], params[1], eps, layer_scaling)
            out = ops.affine(compute, _to_native(coefficients.scale, layout), _to_native(coefficients.shift, layout))
        ctx.save_for_backward(compute, mean_x, var_x, *tracking, *coefficients[:5], coefficients.inv_s)
        ctx.meta = (layout, alpha_bkw, control, params[0], param_dtypes, x.dtype)
        ctx.mark_non_differentiable(tracking.mu_end, tracking.var_end)
        return out.to(x.dtype), tracking.mu_end, tracking.var_end

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mu, _grad_var):
        if ctx.triton:
            return _triton_backward(ctx, grad_out)
        x, mean_x, var_x, *saved = ctx.saved_tensors
        tracking, coefficients = fn.Tracking(*saved[:4]), fn.Coefficients(*saved[4:])
        layout, alpha_bkw, control, weight, param_dtypes, input_dtype = ctx.meta
        ops = backend_for(x)
        with torch.autocast(x.device.type, enabled=False):
            grad_out = grad_out.to(x.dtype).contiguous()
            sum_g, sum_gx = ops.grad_moments(grad_out, x)
            sum_g = _to_canonical(sum_g, layout, mean_x.dtype)
            sum_gx = _to_canonical(sum_gx, layout, mean_x.dtype)
            if control is None:
                u0 = v0 = mean_x.new_zeros(mean_x.shape[:-1])
            else:
                u0, v0 = control[0].to(mean_x.dtype), control[1].to(mean_x.dtype)
            gradients = fn.backward_coefficients(
                sum_g, sum_gx, x.shape[-1], mean_x, var_x, tracking, coefficients, weight, alpha_bkw, u0, v0, scan=ops.scan
            )
            grad_x = ops.grad_affine(
                grad_out, x, *(_to_native(c, layout) for c in (gradients.cg, gradients.cx, gradients.c0)), dtype=input_dtype
            )
        if control is not None:
            control[0].copy_(gradients.u_end)
            control[1].copy_(gradients.v_end)
        grads = [None if d is None else g.to(d) for g, d in zip((gradients.grad_weight, gradients.grad_bias), param_dtypes)]
        return grad_x, *grads, None, None, None, None, None, None, None, None


def _as_x4(t: Tensor, layout: str) -> Tensor:
    """The Triton kernels' (P, C, L, D) view: the time layout is it; the batch layout (N, C, D) is
    the strided view (1, C, N, D). No copy either way."""
    return t if layout == "time" else t.permute(1, 0, 2).unsqueeze(0)


def _from_x4(t: Tensor, layout: str) -> Tensor:
    return t if layout == "time" else t[0].permute(1, 0, 2)


def _triton_forward(ctx, x, weight, bias, mu0, var0, control, layout, alpha_fwd, alpha_bkw, eps, layer_scaling,
                    param_dtypes):
    """The Triton path (``kernels.triton_ops.forward``): x in any dtype the kernels take, any
    strides; saves x and the per-sample moments."""
    from .kernels import triton_ops

    ctx.triton = True
    with torch.autocast(x.device.type, enabled=False):
        out, mu_end, var_end, mean_x, var_x = triton_ops.forward(
            _as_x4(x, layout), weight, bias, mu0, var0, alpha_fwd, eps, layer_scaling)
        finite.check(mu_end + var_end, "OnlineNorm")
    ctx.save_for_backward(x, mean_x, var_x)
    # the start statistics as they were (the module moves its buffers after this call)
    ctx.meta = (layout, mu0.detach().clone(), var0.detach().clone(), weight, bias, control, alpha_fwd, alpha_bkw, eps,
                layer_scaling, param_dtypes)
    ctx.mark_non_differentiable(mu_end, var_end)
    return _from_x4(out, layout), mu_end, var_end


def _triton_backward(ctx, grad_out):
    from .kernels import triton_ops

    x, mean_x, var_x = ctx.saved_tensors
    layout, mu0, var0, weight, bias, control, alpha_fwd, alpha_bkw, eps, layer_scaling, param_dtypes = ctx.meta
    with torch.autocast(x.device.type, enabled=False):
        if control is None:
            u0 = v0 = mu0.new_zeros(())
        else:
            u0, v0 = control[0], control[1]
        grad_x, grad_w, grad_b, u_end, v_end = triton_ops.backward(
            _as_x4(x, layout), _as_x4(grad_out, layout), mean_x, var_x, weight, bias, mu0, var0, u0, v0, alpha_fwd,
            alpha_bkw, eps, layer_scaling, x.dtype)
    if control is not None:
        control[0].copy_(u_end)
        control[1].copy_(v_end)
    grads = [None if d is None else g.to(d) for g, d in zip((grad_w, grad_b), param_dtypes)]
    return _from_x4(grad_x, layout), *grads, None, None, None, None, None, None, None, None


class OnlineNormD1Function(torch.autograd.Function):
    """``OnlineNormFunction`` for one-component samples: x (P, C, L), any strides, P streams over L
    samples, as one kernel each way — ``kernels.cpu_d1`` (numba) on the CPU, ``kernels.triton_ops``
    (``forward_d1``/``backward_d1``) on the Triton path. ``kernels`` is the module to use.

    The same inputs and outputs as ``OnlineNormFunction`` without the layout (x is already
    canonical with D dropped), but it saves only x: the backward recomputes the forward's
    statistics as it runs the control process, so training memory is x plus the output autograd
    keeps anyway.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mu0, var0, control, alpha_fwd, alpha_bkw, eps, layer_scaling, kernels):
        from .kernels import cpu_d1

        triton = kernels is not cpu_d1
        # the numba loops run in fp32/fp64; the Triton kernels read bf16/fp16 as they are
        compute = x if triton or x.dtype in (torch.float32, torch.float64) else x.float()
        with torch.autocast(x.device.type, enabled=False):
            out, mu_end, var_end = kernels.forward_d1(compute, weight, bias, mu0, var0, alpha_fwd, eps, layer_scaling)
            if triton:  # NaN/inf in x reach μ and σ² (the numba loop raises itself)
                finite.check(mu_end + var_end, "OnlineNorm")
        ctx.save_for_backward(compute)
        # the start statistics as they were (the module moves its buffers after this call)
        ctx.meta = (mu0.detach().clone(), var0.detach().clone(), weight, bias, control, alpha_fwd, alpha_bkw, eps,
                    layer_scaling, x.dtype, kernels)
        ctx.mark_non_differentiable(mu_end, var_end)
        return out.to(x.dtype), mu_end, var_end

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mu, _grad_var):
        (x,) = ctx.saved_tensors
        mu0, var0, weight, bias, control, alpha_fwd, alpha_bkw, eps, layer_scaling, input_dtype, kernels = ctx.meta
        if control is None:
            u0 = v0 = mu0.new_zeros(())
        else:
            u0, v0 = control[0], control[1]
        with torch.autocast(x.device.type, enabled=False):
            grad_x, sum_ghy, sum_gh, u_end, v_end = kernels.backward_d1(
                x, grad_out, weight, bias, mu0, var0, u0, v0, alpha_fwd, alpha_bkw, eps, layer_scaling)
        if control is not None:
            control[0].copy_(u_end)
            control[1].copy_(v_end)
        grad_weight = None if weight is None else sum_ghy.sum(dim=0).to(weight.dtype)
        grad_bias = None if bias is None else sum_gh.sum(dim=0).to(bias.dtype)
        return grad_x.to(input_dtype), grad_weight, grad_bias, None, None, None, None, None, None, None, None


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
