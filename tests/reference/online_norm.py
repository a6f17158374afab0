"""Online Normalization written as the paper's per-sample loop: slow, obvious, the test truth.

A single stream is a tensor (L, C, D): L samples in order, C features, D components each.
Everything runs in float64. Affine and error compensation are composed with plain torch ops
and differentiated by autograd; only the normalization core uses the explicit control loop.
"""

from __future__ import annotations

import torch

CLAMP = 5.0


def forward_loop(x, mu, var, alpha, eps):
    """The tracking process, one sample at a time. Returns y (L, C, D), the σ² before each sample
    (L, C), and the final μ, σ²."""
    ys, var_before = [], []
    for x_t in x:
        m = x_t.mean(dim=-1)
        s = ((x_t - m[:, None]) ** 2).mean(dim=-1)
        ys.append((x_t - mu[:, None]) / torch.sqrt(var[:, None] + eps))
        var_before.append(var)
        var = alpha * var + (1 - alpha) * s + alpha * (1 - alpha) * (m - mu) ** 2
        mu = alpha * mu + (1 - alpha) * m
    return torch.stack(ys), torch.stack(var_before), mu, var


def control_loop(grad_y, y, var_before, alpha, eps, u, v):
    """The control process, one sample at a time, in forward order. Returns x' (L, C, D), u, v."""
    grads = []
    for g_t, y_t, var_t in zip(grad_y, y, var_before):
        z = g_t - (1 - alpha) * v[:, None] * y_t
        v = v + (z * y_t).mean(dim=-1)
        w = z / torch.sqrt(var_t[:, None] + eps)
        x_grad = w - (1 - alpha) * u[:, None]
        u = u + x_grad.mean(dim=-1)
        grads.append(x_grad)
    return torch.stack(grads), u, v


def affine_ecm(y, weight, bias, ecm, eps):
    """ECM(γ y + β) for one stream (L, C, D); layer scaling per sample over (C, D)."""
    h = y
    if weight is not None:
        h = h * weight[None, :, None] + bias[None, :, None]
    if ecm == "ls":
        h = h / torch.sqrt((h**2).mean(dim=(1, 2), keepdim=True) + eps)
    elif ecm == "ac":
        h = torch.clamp(h, -CLAMP, CLAMP)
    return h


def layer(x, grad_out, *, mu, var, u, v, weight, bias, ecm, alpha_fwd, alpha_bkw, eps):
    """Forward and backward of the whole layer on one stream (L, C, D).

    Returns a dict: out, grad_x, grad_weight, grad_bias, mu, var, u, v (final states).
    """
    x, grad_out = x.double(), grad_out.double()
    y, var_before, mu, var = forward_loop(x, mu.double(), var.double(), alpha_fwd, eps)
    y = y.detach().requires_grad_(True)
    params = [p.detach().double().requires_grad_(True) if p is not None else None for p in (weight, bias)]
    out = affine_ecm(y, params[0], params[1], ecm, eps)
    out.backward(grad_out)
    grad_x, u, v = control_loop(y.grad, y.detach(), var_before, alpha_bkw, eps, u.double(), v.double())
    return {
        "out": out.detach(),
        "grad_x": grad_x,
        "grad_weight": params[0].grad if params[0] is not None else None,
        "grad_bias": params[1].grad if params[1] is not None else None,
        "mu": mu,
        "var": var,
        "u": u,
        "v": v,
    }


def randomize(layer):
    """Non-trivial running statistics and affine parameters for an OnlineNorm layer under test, so
    that none of them is a no-op in a comparison with the reference."""
    import torch

    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
        if layer.affine:
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_(0.0, 0.5)
    return layer


def expected_call(layer, x, grad_out, mu0, var0, control0=None):
    """What one training call ``layer(x).backward(grad_out)`` of an OnlineNorm must give, from the
    per-sample loops in float64: out, grad_x (x's shape), grad_weight, grad_bias, and the buffers
    after the call (running_mean, running_var; control on the batch axis). ``mu0``, ``var0``
    (and ``control0``, (2, C)) are the buffers before the call."""
    import torch

    x, grad_out = x.detach().double().cpu(), grad_out.detach().double().cpu()
    channels = x.shape[1]
    kw = dict(weight=None if layer.weight is None else layer.weight.detach().cpu(),
              bias=None if layer.bias is None else layer.bias.detach().cpu(), ecm=layer.ecm,
              alpha_fwd=layer.alpha_fwd, alpha_bkw=layer.alpha_bkw, eps=layer.eps)
    mu0, var0 = mu0.detach().double().cpu(), var0.detach().double().cpu()
    if layer.stream_axis == "batch":
        u0, v0 = (torch.zeros(channels), torch.zeros(channels)) if control0 is None else control0.double().cpu()
        samples, grads = x.reshape(x.shape[0], channels, -1), grad_out.reshape(x.shape[0], channels, -1)
        got = layer_fn(samples, grads, mu=mu0, var=var0, u=u0, v=v0, **kw)
        return {"out": got["out"].reshape(x.shape), "grad_x": got["grad_x"].reshape(x.shape),
                "grad_weight": got["grad_weight"], "grad_bias": got["grad_bias"], "running_mean": got["mu"],
                "running_var": got["var"], "control": torch.stack([got["u"], got["v"]])}
    frames = x if x.dim() == 4 else x.unsqueeze(-1)  # (B, C, T, F)
    grads = grad_out if x.dim() == 4 else grad_out.unsqueeze(-1)
    zeros = torch.zeros(channels, dtype=torch.float64)
    runs = [layer_fn(frames[b].transpose(0, 1), grads[b].transpose(0, 1), mu=mu0, var=var0, u=zeros, v=zeros, **kw)
            for b in range(x.shape[0])]
    out = torch.stack([r["out"].transpose(0, 1) for r in runs]).reshape(x.shape)
    grad_x = torch.stack([r["grad_x"].transpose(0, 1) for r in runs]).reshape(x.shape)
    mus, vars_ = torch.stack([r["mu"] for r in runs]), torch.stack([r["var"] for r in runs])
    return {"out": out, "grad_x": grad_x,
            "grad_weight": None if kw["weight"] is None else sum(r["grad_weight"] for r in runs),
            "grad_bias": None if kw["bias"] is None else sum(r["grad_bias"] for r in runs),
            "running_mean": mus.mean(0), "running_var": vars_.mean(0) + mus.var(0, correction=0)}


layer_fn = layer  # the whole-layer loop under a name that ``expected_call``'s arguments do not shadow


def assert_call_matches(layer, x, out, expected, **tol):
    """Compare a finished call (its output ``out``, x.grad set, the layer's grads and buffers moved)
    with ``expected_call``."""
    import torch

    checks = [("out", out), ("grad_x", x.grad), ("running_mean", layer.running_mean),
              ("running_var", layer.running_var)]
    if layer.weight is not None:
        checks += [("grad_weight", layer.weight.grad), ("grad_bias", layer.bias.grad)]
    if "control" in expected:
        checks.append(("control", layer.control))
    for name, got in checks:
        torch.testing.assert_close(got.detach().double().cpu(), expected[name], msg=lambda m, n=name: f"{n}: {m}", **tol)


def laid_out(shape, kind, generator=None, device="cpu"):
    """A random tensor of ``shape`` with per-feature offsets, laid out in memory as ``kind`` says:
    contiguous, features innermost (a pointwise layer's output), time first (a GRU's), a strided
    slice (no dense layout), or channels_last. The numbers are drawn on the CPU (the same on every
    device) and the layout is made on ``device`` (``.to`` would make a strided slice dense)."""
    import torch

    batch, channels = shape[0], shape[1]
    rest = shape[2:]

    def draw(*size):
        return torch.randn(*size, generator=generator).to(device)

    if kind == "contiguous":
        x = draw(*shape)
    elif kind == "features_inner":  # (B, T, C) or (B, T, F, C) seen as (B, C, T[, F]): a pointwise layer's output
        x = draw(batch, *rest, channels).movedim(-1, 1)
    elif kind == "time_first":  # (T, B, C) seen as (B, C, T): a GRU's output
        x = draw(rest[0], batch, channels, *rest[1:]).movedim(0, 2)
    elif kind == "strided":  # a slice: no dense layout at all
        big = draw(batch, 2 * channels, *(r + 2 for r in rest))
        x = big[(slice(None), slice(None, None, 2), *(slice(1, -1) for _ in rest))]
    elif kind == "channels_last":
        x = draw(*shape).contiguous(memory_format=torch.channels_last)
    else:
        raise ValueError(kind)
    assert x.shape == torch.Size(shape)
    offsets = torch.linspace(-3, 3, channels, device=device).view(1, channels, *([1] * len(rest)))
    return x.mul_(2.0).add_(offsets)
