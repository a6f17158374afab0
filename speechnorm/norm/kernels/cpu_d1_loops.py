"""The compiled loops of ``cpu_d1`` (numba); imported on first use, so that importing speechnorm
does not import numba. See ``cpu_d1`` for the math and the layouts."""

from __future__ import annotations

import numba
import numpy as np

TILE = 16  # frames per tile when time is the contiguous axis
STREAM_FIRST, TIME_FIRST, TIME_CONTIGUOUS = 0, 1, 2  # the layouts, see ``cpu_d1``

# No fastmath "nnan"/"ninf": the forward reports non-finite input, which those flags would let
# the compiler assume away. "reassoc" lets the sums over features vectorise.
_FLAGS = {"contract", "arcp", "reassoc"}
inner = numba.njit(fastmath=_FLAGS, cache=True, inline="always")
outer = numba.njit(fastmath=_FLAGS, cache=True, parallel=True)


@inner
def untile(tile, rows, t0, n):
    """A tile of n frames (frame, feature) back into time-contiguous rows (feature, time) from t0."""
    for i in range(rows.shape[0]):
        row = rows[i, t0:t0 + n]
        for j in range(n):
            row[j] = tile[j, i]


@inner
def forward_frame(xt, out_t, g, b, mu, var, h, consts, layer_scaling):
    """One frame of one stream: rows of C features. Returns the frame's NaN/inf probe."""
    alpha, keep, eps, one, zero = consts[0], consts[1], consts[2], consts[3], consts[4]
    seen = zero
    square = zero
    for i in range(xt.shape[0]):
        value = xt[i]
        seen += value * zero  # NaN/inf propagate into `seen`
        d = value - mu[i]
        hi = g[i] * (d / np.sqrt(var[i] + eps)) + b[i]
        h[i] = hi
        square += hi * hi
        mu[i] += keep * d
        var[i] = alpha * (var[i] + keep * d * d)
    inv_s = one / np.sqrt(square / xt.shape[0] + eps) if layer_scaling else one
    for i in range(xt.shape[0]):
        out_t[i] = h[i] * inv_s
    return seen


@inner
def backward_frame(xt, gt, gx_t, g, b, mu, var, u, v, y, inv_std, h, gy_sum, g_sum, consts, layer_scaling):
    alpha, keep, eps, one, zero, k = consts[0], consts[1], consts[2], consts[3], consts[4], consts[5]
    width = xt.shape[0]
    square = zero
    for i in range(width):  # the forward again: y, h; μ and σ² move on
        d = xt[i] - mu[i]
        inv_std[i] = one / np.sqrt(var[i] + eps)
        y[i] = d * inv_std[i]
        h[i] = g[i] * y[i] + b[i]
        square += h[i] * h[i]
        mu[i] += keep * d
        var[i] = alpha * (var[i] + keep * d * d)
    inv_s = one
    proj = zero
    if layer_scaling:  # g_h = (g - mean(g·out) out) / s with out = h / s
        inv_s = one / np.sqrt(square / width + eps)
        for i in range(width):
            proj += gt[i] * h[i]
        proj *= inv_s * inv_s / width
    for i in range(width):
        gh = (gt[i] - proj * h[i]) * inv_s
        gy_sum[i] += gh * y[i]
        g_sum[i] += gh
        z = g[i] * gh - k * v[i] * y[i]  # the control process on ∂L/∂y = γ g_h
        v[i] += z * y[i]
        xp = z * inv_std[i] - k * u[i]
        u[i] += xp
        gx_t[i] = xp


@outer
def forward(x, layout, g, b, mu0, var0, consts, layer_scaling, out, mu_end, var_end):
    """x, out: (P, L, C), (L, P, C) or (P, C, L) C-contiguous arrays, as ``layout`` says."""
    streams, features = mu0.shape
    length = x.shape[2] if layout == TIME_CONTIGUOUS else x.shape[1] if layout == STREAM_FIRST else x.shape[0]
    zero = consts[4]
    bad = 0
    for p in numba.prange(streams):
        mu = mu0[p].copy()
        var = var0[p].copy()
        h = np.empty(features, x.dtype)
        seen = zero
        if layout == TIME_CONTIGUOUS:
            tile_x = np.empty((TILE, features), x.dtype)
            tile_o = np.empty((TILE, features), x.dtype)
            xp, op = x[p], out[p]
            for t0 in range(0, length, TILE):
                n = min(TILE, length - t0)
                for i in range(features):
                    row = xp[i, t0:t0 + n]
                    for j in range(n):
                        tile_x[j, i] = row[j]
                for j in range(n):
                    seen += forward_frame(tile_x[j], tile_o[j], g, b, mu, var, h, consts, layer_scaling)
                untile(tile_o, op, t0, n)
        elif layout == STREAM_FIRST:
            for t in range(length):
                seen += forward_frame(x[p, t], out[p, t], g, b, mu, var, h, consts, layer_scaling)
        else:
            for t in range(length):
                seen += forward_frame(x[t, p], out[t, p], g, b, mu, var, h, consts, layer_scaling)
        mu_end[p] = mu
        var_end[p] = var
        if seen != zero:
            bad += 1
    return bad


@outer
def backward(x, grad_out, layout, g, b, mu0, var0, u0, v0, consts, layer_scaling, grad_x, sum_ghy, sum_gh,
             u_end, v_end):
    streams, features = mu0.shape
    length = x.shape[2] if layout == TIME_CONTIGUOUS else x.shape[1] if layout == STREAM_FIRST else x.shape[0]
    for p in numba.prange(streams):
        mu = mu0[p].copy()
        var = var0[p].copy()
        u = u0[p].copy()
        v = v0[p].copy()
        y = np.empty(features, x.dtype)
        inv_std = np.empty(features, x.dtype)
        h = np.empty(features, x.dtype)
        gy_sum = np.zeros(features, np.float64)
        g_sum = np.zeros(features, np.float64)
        if layout == TIME_CONTIGUOUS:
            tile_x = np.empty((TILE, features), x.dtype)
            tile_g = np.empty((TILE, features), x.dtype)
            tile_o = np.empty((TILE, features), x.dtype)
            xp, gp, op = x[p], grad_out[p], grad_x[p]
            for t0 in range(0, length, TILE):
                n = min(TILE, length - t0)
                for i in range(features):
                    row_x = xp[i, t0:t0 + n]
                    row_g = gp[i, t0:t0 + n]
                    for j in range(n):
                        tile_x[j, i] = row_x[j]
                        tile_g[j, i] = row_g[j]
                for j in range(n):
                    backward_frame(tile_x[j], tile_g[j], tile_o[j], g, b, mu, var, u, v, y, inv_std, h, gy_sum,
                                   g_sum, consts, layer_scaling)
                untile(tile_o, op, t0, n)
        elif layout == STREAM_FIRST:
            for t in range(length):
                backward_frame(x[p, t], grad_out[p, t], grad_x[p, t], g, b, mu, var, u, v, y, inv_std, h, gy_sum,
                               g_sum, consts, layer_scaling)
        else:
            for t in range(length):
                backward_frame(x[t, p], grad_out[t, p], grad_x[t, p], g, b, mu, var, u, v, y, inv_std, h, gy_sum,
                               g_sum, consts, layer_scaling)
        sum_ghy[p] = gy_sum
        sum_gh[p] = g_sum
        u_end[p] = u
        v_end[p] = v

