"""Triton kernels for Online Norm: the whole layer in a few passes, with no host sync.

Layout. Every input is seen as ``x4`` (P, C, L, D) with *any* strides: P streams, C features, L
samples along each stream, D components per sample (the time axis's (B, C, T, F) is that; the
batch axis's (N, C, D) is the strided view (1, C, N, D)). Nothing is copied to make it
contiguous. The per-sample statistics are (P, C, L) float32 tensors laid out in the same memory
order as x's rows, so that a dense x and its statistics are read with one flat index.

Samples with several components (D > 1), forward:
1. ``_moments_kernel``: per row, mean and variance, one read of x (shifted by the row's first
   component, chunks of the row combined by Chan's formula: no cancellation, without reading x
   twice);
2. ``_track_kernel``: per (stream, time chunk), all features as lanes, the tracking process of μ
   and σ², which also writes each row's affine map (centre μ_{t-1}, scale, shift) with layer
   scaling's per-sample reduction over features done in registers (the chunks start from the
   statistics the time-parallel passes described below give them);
3. ``_affine_*``: out = (x − centre)·scale + shift, one read of x and one write (a flat 1-D
   kernel when x is dense, a strided 2-D one otherwise).
Backward: ``_grad_moments_kernel`` (Σ g and the centred Σ g·(x − mean), one read of g and x),
``_control_kernel`` (per (stream, time chunk): the tracking again, the exact layer-scaling and
affine gradients and the paper's control process u, v; it also sums γ's and β's gradients), then
``_grad_affine_*`` (∂L/∂x = g·cg + (x − centre)·cx + c0). Saved for backward: x and the two
per-sample moments; nothing else.

One-component samples (D = 1: recurrent and fully connected features, (P, C, L)) have no
reduction to do, so the layer is the statistics' recurrence itself, run **in parallel over time**:
the L frames are cut into chunks of 32..256 frames and every (stream, chunk) is a program. A
summary pass gives each chunk's effect on μ and σ² as a function of the μ it starts from (exact:
σ²_end is quadratic in it), a small pass walks the chunks in order to give each its starting
statistics, and the main pass (``_d1_forward_kernel``) normalizes every chunk at once. The
backward does the same for the control variables u and v (linear in the v a chunk starts from)
and writes ∂L/∂x (``_d1_backward_kernel``). Forward reads x twice and writes the output;
backward reads x three times and g twice and writes ∂L/∂x; only x is saved. Short streams take
one chunk: the plain sequential loop, one kernel each way.

Every loop over time or over a row's chunks is a ``tl.range`` with ``num_stages``, which Triton
software-pipelines (asynchronous copies) when the addresses are aligned; decays and eps are kernel
scalars; statistics and sums are float32, accumulated centred. ``TRITON_INTERPRET=1`` runs the
same kernels on the CPU, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

STAGES = 3  # software pipelining depth of every loop
TILE = 1024  # elements per program in the row and elementwise kernels
MAX_LANES = 4096  # features one stream's statistics kernel holds (layer scaling needs them all)
TARGET_PROGRAMS = 512  # (stream, time chunk) programs the time-parallel kernels aim for
CHUNK = None  # frames per time chunk; None: chosen per launch (``time_chunks``)
MIN_CHUNK = 32  # shorter chunks would move more summary state than data


def _interpreter_compat() -> None:
    """The interpreter converts a scalar kernel argument used as a range bound with ``int()`` on a
    one-element array, which numpy ≥ 2.4 refuses; read the element instead (interpreter only)."""
    from triton.runtime import interpreter

    if getattr(interpreter, "_speechnorm_compat", False):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._speechnorm_compat = True


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_compat()


# --------------------------------------------------------------------------- kernels
@triton.jit
def _row_offsets(row, n1, n2, s0, s1, s2):
    """Row index (in memory order over three row axes of sizes (·, n1, n2)) -> element offset."""
    i2 = row % n2
    rest = row // n2
    return (rest // n1).to(tl.int64) * s0 + (rest % n1).to(tl.int64) * s1 + i2.to(tl.int64) * s2


@triton.jit
def _moments_kernel(x_ptr, mean_ptr, var_ptr, rows, width, n1, n2, sx0, sx1, sx2, sxd, ss0, ss1, ss2,
                    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    base = _row_offsets(row, n1, n2, sx0, sx1, sx2)
    # sums of x − (the row's first component): small numbers, so a large offset costs no digits
    pivot = tl.load(x_ptr + base, mask=row_ok, other=0.0).to(tl.float32)
    count = tl.zeros([BLOCK_R], tl.float32)
    mean = tl.zeros([BLOCK_R], tl.float32)
    m2 = tl.zeros([BLOCK_R], tl.float32)
    for start in tl.range(0, width, BLOCK_D, num_stages=STAGES):
        col = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (col < width)[None, :]
        x = tl.load(x_ptr + base[:, None] + col[None, :].to(tl.int64) * sxd, mask=ok, other=0.0).to(tl.float32)
        x = tl.where(ok, x - pivot[:, None], 0.0)
        n_b = tl.minimum(width - start, BLOCK_D).to(tl.float32)
        mean_b = tl.sum(x, axis=1) / n_b
        centred = tl.where(ok, x - mean_b[:, None], 0.0)
        total = count + n_b
        delta = mean_b - mean
        mean += delta * (n_b / total)
        m2 += tl.sum(centred * centred, axis=1) + delta * delta * (count * (n_b / total))
        count = total
    stat = _row_offsets(row, n1, n2, ss0, ss1, ss2)
    tl.store(mean_ptr + stat, pivot + mean, mask=row_ok)
    tl.store(var_ptr + stat, m2 / width, mask=row_ok)


@triton.jit
def _grad_moments_kernel(g_ptr, x_ptr, mean_ptr, sum_g_ptr, sum_gc_ptr, rows, width, n1, n2, sg0, sg1, sg2, sgd,
                         sx0, sx1, sx2, sxd, ss0, ss1, ss2,
                         BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr):
    """Σ_D g and Σ_D g·(x − mean_D x) per row: centred, so no cancellation for offset features."""
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    g_base = _row_offsets(row, n1, n2, sg0, sg1, sg2)
    x_base = _row_offsets(row, n1, n2, sx0, sx1, sx2)
    stat = _row_offsets(row, n1, n2, ss0, ss1, ss2)
    mean = tl.load(mean_ptr + stat, mask=row_ok, other=0.0)
    sum_g = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    sum_gc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for start in tl.range(0, width, BLOCK_D, num_stages=STAGES):
        col = (start + tl.arange(0, BLOCK_D))
        ok = row_ok[:, None] & (col < width)[None, :]
        col = col[None, :].to(tl.int64)
        g = tl.load(g_ptr + g_base[:, None] + col * sgd, mask=ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + x_base[:, None] + col * sxd, mask=ok, other=0.0).to(tl.float32)
        sum_g += g
        sum_gc += g * tl.where(ok, x - mean[:, None], 0.0)
    tl.store(sum_g_ptr + stat, tl.sum(sum_g, axis=1), mask=row_ok)
    tl.store(sum_gc_ptr + stat, tl.sum(sum_gc, axis=1), mask=row_ok)


@triton.jit
def _affine_rows_kernel(x_ptr, centre_ptr, scale_ptr, shift_ptr, out_ptr, rows, width, n1, n2,
                        sx0, sx1, sx2, sxd, so0, so1, so2, sod, ss0, ss1, ss2,
                        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    x_base = _row_offsets(row, n1, n2, sx0, sx1, sx2)
    o_base = _row_offsets(row, n1, n2, so0, so1, so2)
    stat = _row_offsets(row, n1, n2, ss0, ss1, ss2)
    centre = tl.load(centre_ptr + stat, mask=row_ok, other=0.0)[:, None]
    scale = tl.load(scale_ptr + stat, mask=row_ok, other=0.0)[:, None]
    shift = tl.load(shift_ptr + stat, mask=row_ok, other=0.0)[:, None]
    for start in tl.range(0, width, BLOCK_D, num_stages=STAGES):
        col = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (col < width)[None, :]
        col = col[None, :].to(tl.int64)
        x = tl.load(x_ptr + x_base[:, None] + col * sxd, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + o_base[:, None] + col * sod, ((x - centre) * scale + shift).to(out_ptr.dtype.element_ty),
                 mask=ok)


@triton.jit
def _affine_flat_kernel(x_ptr, centre_ptr, scale_ptr, shift_ptr, out_ptr, total, width, BLOCK: tl.constexpr):
    """The same on a dense x whose statistics share its row order: element i belongs to row i // D."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    row = offs // width
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    centre = tl.load(centre_ptr + row, mask=ok, other=0.0)
    scale = tl.load(scale_ptr + row, mask=ok, other=0.0)
    shift = tl.load(shift_ptr + row, mask=ok, other=0.0)
    tl.store(out_ptr + offs, ((x - centre) * scale + shift).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _grad_affine_rows_kernel(g_ptr, x_ptr, centre_ptr, cg_ptr, cx_ptr, c0_ptr, out_ptr, rows, width, n1, n2,
                             sg0, sg1, sg2, sgd, sx0, sx1, sx2, sxd, so0, so1, so2, sod, ss0, ss1, ss2,
                             BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    g_base = _row_offsets(row, n1, n2, sg0, sg1, sg2)
    x_base = _row_offsets(row, n1, n2, sx0, sx1, sx2)
    o_base = _row_offsets(row, n1, n2, so0, so1, so2)
    stat = _row_offsets(row, n1, n2, ss0, ss1, ss2)
    centre = tl.load(centre_ptr + stat, mask=row_ok, other=0.0)[:, None]
    cg = tl.load(cg_ptr + stat, mask=row_ok, other=0.0)[:, None]
    cx = tl.load(cx_ptr + stat, mask=row_ok, other=0.0)[:, None]
    c0 = tl.load(c0_ptr + stat, mask=row_ok, other=0.0)[:, None]
    for start in tl.range(0, width, BLOCK_D, num_stages=STAGES):
        col = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (col < width)[None, :]
        col = col[None, :].to(tl.int64)
        g = tl.load(g_ptr + g_base[:, None] + col * sgd, mask=ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + x_base[:, None] + col * sxd, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + o_base[:, None] + col * sod, (g * cg + (x - centre) * cx + c0).to(out_ptr.dtype.element_ty),
                 mask=ok)


@triton.jit
def _grad_affine_flat_kernel(g_ptr, x_ptr, centre_ptr, cg_ptr, cx_ptr, c0_ptr, out_ptr, total, width,
                             BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < total
    row = offs // width
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    centre = tl.load(centre_ptr + row, mask=ok, other=0.0)
    cg = tl.load(cg_ptr + row, mask=ok, other=0.0)
    cx = tl.load(cx_ptr + row, mask=ok, other=0.0)
    c0 = tl.load(c0_ptr + row, mask=ok, other=0.0)
    tl.store(out_ptr + offs, (g * cg + (x - centre) * cx + c0).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _affine_params(w_ptr, b_ptr, c, ok, AFFINE: tl.constexpr, BLOCK_C: tl.constexpr):
    """γ and β of the lanes ``c`` (1 and 0 without an affine transform)."""
    if AFFINE:
        return tl.load(w_ptr + c, mask=ok, other=0.0), tl.load(b_ptr + c, mask=ok, other=0.0)
    return tl.full([BLOCK_C], 1.0, tl.float32), tl.zeros([BLOCK_C], tl.float32)


@triton.jit
def _stream_state(mu0_ptr, var0_ptr, u0_ptr, v0_ptr, state, ok):
    """A stream's μ, σ², u, v before its first sample."""
    return (tl.load(mu0_ptr + state, mask=ok, other=0.0), tl.load(var0_ptr + state, mask=ok, other=1.0),
            tl.load(u0_ptr + state, mask=ok, other=0.0), tl.load(v0_ptr + state, mask=ok, other=0.0))


@triton.jit
def _store_sums(gw_ptr, gb_ptr, u_end_ptr, v_end_ptr, state, ok, sum_w, sum_b, u, v):
    """A stream's Σ g_h·y and Σ g_h (γ's and β's gradients) and its end control state."""
    tl.store(gw_ptr + state, sum_w, mask=ok)
    tl.store(gb_ptr + state, sum_b, mask=ok)
    tl.store(u_end_ptr + state, u, mask=ok)
    tl.store(v_end_ptr + state, v, mask=ok)


@triton.jit
def _track_kernel(mean_ptr, var_ptr, mu_in_ptr, var_in_ptr, w_ptr, b_ptr, centre_ptr, scale_ptr, shift_ptr,
                  mu_end_ptr, var_end_ptr, channels, length, chunk, chunks, sp, sc, sl, alpha, eps,
                  AFFINE: tl.constexpr, LS: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """The tracking process over one (stream, time chunk) (all features as lanes), from the μ, σ²
    the chunk starts with, and every sample's affine map: out = (x − μ_{t-1}) · γ inv_std inv_s +
    β inv_s. Writes the chunk's end statistics (the last chunk's are the stream's)."""
    p, k, c, ok, state, t0, n = _chunk_lanes(channels, length, chunk, chunks, BLOCK_C)
    mu = tl.load(mu_in_ptr + state, mask=ok, other=0.0)
    var = tl.load(var_in_ptr + state, mask=ok, other=1.0)
    gamma, beta = _affine_params(w_ptr, b_ptr, c, ok, AFFINE, BLOCK_C)
    keep = 1.0 - alpha
    off = p.to(tl.int64) * sp + c.to(tl.int64) * sc + t0.to(tl.int64) * sl
    for _ in tl.range(0, n, num_stages=STAGES):
        m = tl.load(mean_ptr + off, mask=ok, other=0.0)
        v = tl.load(var_ptr + off, mask=ok, other=0.0)
        inv_std = 1.0 / tl.sqrt(var + eps)
        delta = m - mu
        scale = gamma * inv_std
        shift = beta
        if LS:
            h_mean = scale * delta + beta
            h2 = tl.where(ok, scale * scale * v + h_mean * h_mean, 0.0)
            inv_s = 1.0 / tl.sqrt(tl.sum(h2, axis=0) / channels + eps)
            scale = scale * inv_s
            shift = beta * inv_s
        tl.store(centre_ptr + off, mu, mask=ok)
        tl.store(scale_ptr + off, scale, mask=ok)
        tl.store(shift_ptr + off, shift, mask=ok)
        var = alpha * var + keep * v + alpha * keep * delta * delta
        mu += keep * delta
        off += sl
    tl.store(mu_end_ptr + state, mu, mask=ok)
    tl.store(var_end_ptr + state, var, mask=ok)


@triton.jit
def _rows_gradient(m, vx, s_g, s_gc, mu, var, gamma, beta, ok, channels, width, eps, LS: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """One sample of the D > 1 backward before the control process, from its moments (m, vx) and
    S_g = Σ g, S_gc = Σ g (x − m): inv_std, δ = m − μ, mean_D y, mean_D y², Σ g_h, Σ g_h·y, and
    layer scaling's map g_h = cg_ls g + cx_ls (x − μ) + c0_ls.
    out = inv_s (a (x − μ) + β), a = γ inv_std;  g_h = inv_s g − inv_s² proj (a (x − μ) + β)."""
    inv_std = 1.0 / tl.sqrt(var + eps)
    delta = m - mu
    mean_y = delta * inv_std
    mean_y2 = (vx + delta * delta) * inv_std * inv_std
    a = gamma * inv_std
    s_gd = s_gc + delta * s_g  # Σ g (x − μ_{t-1})
    if LS:
        h_mean = a * delta + beta
        h2 = tl.where(ok, a * a * vx + h_mean * h_mean, 0.0)
        inv_s = 1.0 / tl.sqrt(tl.sum(h2, axis=0) / channels + eps)
        g_out = tl.where(ok, inv_s * (a * s_gd + beta * s_g), 0.0)
        proj = tl.sum(g_out, axis=0) / (channels * width)
        cg_ls = inv_s + tl.zeros([BLOCK_C], tl.float32)
        cx_ls = -inv_s * inv_s * proj * a
        c0_ls = -inv_s * inv_s * proj * beta
        s_gh = cg_ls * s_g + (cx_ls * delta + c0_ls) * width
        s_ghd = cg_ls * s_gd + (cx_ls * (vx + delta * delta) + c0_ls * delta) * width
    else:
        cg_ls = tl.full([BLOCK_C], 1.0, tl.float32)
        cx_ls = tl.zeros([BLOCK_C], tl.float32)
        c0_ls = tl.zeros([BLOCK_C], tl.float32)
        s_gh = s_g
        s_ghd = s_gd
    return inv_std, delta, mean_y, mean_y2, s_gh, inv_std * s_ghd, cg_ls, cx_ls, c0_ls


@triton.jit
def _rows_control_summary_kernel(mean_ptr, var_ptr, sum_g_ptr, sum_gc_ptr, mu_in_ptr, var_in_ptr, w_ptr, b_ptr,
                                 agg_ptr, channels, length, chunk, chunks, sp, sc, sl, width, alpha_fwd, alpha_bkw,
                                 eps, AFFINE: tl.constexpr, LS: tl.constexpr, BLOCK_C: tl.constexpr,
                                 STAGES: tl.constexpr):
    """``_d1_control_summary_kernel`` for D > 1, from the per-sample moments and gradient sums."""
    p, k, c, ok, state, t0, n = _chunk_lanes(channels, length, chunk, chunks, BLOCK_C)
    mu = tl.load(mu_in_ptr + state, mask=ok, other=0.0)
    var = tl.load(var_in_ptr + state, mask=ok, other=1.0)
    gamma, beta = _affine_params(w_ptr, b_ptr, c, ok, AFFINE, BLOCK_C)
    keep = 1.0 - alpha_fwd
    kb = 1.0 - alpha_bkw
    off = p.to(tl.int64) * sp + c.to(tl.int64) * sc + t0.to(tl.int64) * sl
    a_prod, v, u0, u1 = _summary_start(BLOCK_C)
    for _ in tl.range(0, n, num_stages=STAGES):
        m = tl.load(mean_ptr + off, mask=ok, other=0.0)
        vx = tl.load(var_ptr + off, mask=ok, other=0.0)
        s_g = tl.load(sum_g_ptr + off, mask=ok, other=0.0)
        s_gc = tl.load(sum_gc_ptr + off, mask=ok, other=0.0)
        inv_std, delta, mean_y, mean_y2, s_gh, s_ghy, _, _, _ = _rows_gradient(
            m, vx, s_g, s_gc, mu, var, gamma, beta, ok, channels, width, eps, LS, BLOCK_C)
        a_prod, v, u0, u1 = _control_summary_step(a_prod, v, u0, u1, inv_std, mean_y, mean_y2, gamma * s_gh / width,
                                                  gamma * s_ghy / width, alpha_bkw, kb)
        var = alpha_fwd * var + keep * vx + alpha_fwd * keep * delta * delta
        mu += keep * delta
        off += sl
    _store_control_summary(agg_ptr, p, k, chunks, channels, c, ok, a_prod, v, u0, u1)


@triton.jit
def _control_summary_step(a_prod, v, u0, u1, inv_std, mean_y, mean_y2, gy_mean, gyy_mean, alpha_bkw, kb):
    """One sample of a chunk's control summary (v started from 0 and the product of its decays, u's
    parts independent of and proportional to the v the chunk starts from):
        u_t = α_b u_{t-1} + inv_std (mean_D g_y − k mean_D y · v_{t-1}),  v_{t-1} = A v_in + Ṽ,
        v_t = (1 − k mean_D y²) v_{t-1} + mean_D (g_y y)."""
    u0 = alpha_bkw * u0 + inv_std * (gy_mean - kb * mean_y * v)
    u1 = alpha_bkw * u1 - inv_std * kb * mean_y * a_prod
    step = 1.0 - kb * mean_y2
    return a_prod * step, step * v + gyy_mean, u0, u1


@triton.jit
def _store_control_summary(agg_ptr, p, k, chunks, channels, c, ok, a_prod, v, u0, u1):
    base = ((p * chunks + k) * 4).to(tl.int64) * channels + c
    tl.store(agg_ptr + base, a_prod, mask=ok)
    tl.store(agg_ptr + base + channels, v, mask=ok)
    tl.store(agg_ptr + base + 2 * channels, u0, mask=ok)
    tl.store(agg_ptr + base + 3 * channels, u1, mask=ok)


@triton.jit
def _control_kernel(mean_ptr, var_ptr, sum_g_ptr, sum_gc_ptr, mu_in_ptr, var_in_ptr, u_in_ptr, v_in_ptr, w_ptr, b_ptr,
                    centre_ptr, cg_ptr, cx_ptr, c0_ptr, gw_ptr, gb_ptr, u_end_ptr, v_end_ptr,
                    channels, length, chunk, chunks, sp, sc, sl, width, alpha_fwd, alpha_bkw, eps,
                    AFFINE: tl.constexpr, LS: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """The backward over one (stream, time chunk), from the μ, σ², u, v it starts with: the tracking
    again (nothing saved but the moments), layer scaling's and the affine map's exact gradients
    (``_rows_gradient``), the control process

        z_t = γ g_h − k v_{t-1} y_t,  v_t = v_{t-1} + mean_D(z_t y_t),
        x'_t = z_t inv_std_t − k u_{t-1},  u_t = u_{t-1} + mean_D(x'_t)       (k = 1 − α_b)

    reduced to per-sample sums, and every row's gradient map ∂L/∂x = g·cg + (x − μ_{t-1})·cx + c0.
    Writes the chunk's Σ g_h·y, Σ g_h and end (u, v)."""
    p, k, c, ok, state, t0, n = _chunk_lanes(channels, length, chunk, chunks, BLOCK_C)
    mu, var, u, v = _stream_state(mu_in_ptr, var_in_ptr, u_in_ptr, v_in_ptr, state, ok)
    gamma, beta = _affine_params(w_ptr, b_ptr, c, ok, AFFINE, BLOCK_C)
    keep = 1.0 - alpha_fwd
    kb = 1.0 - alpha_bkw
    sum_w = tl.zeros([BLOCK_C], tl.float32)
    sum_b = tl.zeros([BLOCK_C], tl.float32)
    off = p.to(tl.int64) * sp + c.to(tl.int64) * sc + t0.to(tl.int64) * sl
    for _ in tl.range(0, n, num_stages=STAGES):
        m = tl.load(mean_ptr + off, mask=ok, other=0.0)
        vx = tl.load(var_ptr + off, mask=ok, other=0.0)
        s_g = tl.load(sum_g_ptr + off, mask=ok, other=0.0)
        s_gc = tl.load(sum_gc_ptr + off, mask=ok, other=0.0)
        inv_std, delta, mean_y, mean_y2, s_gh, s_ghy, cg_ls, cx_ls, c0_ls = _rows_gradient(
            m, vx, s_g, s_gc, mu, var, gamma, beta, ok, channels, width, eps, LS, BLOCK_C)
        sum_w += s_ghy
        sum_b += s_gh
        kv = kb * v
        ku = kb * u
        v = (1.0 - kb * mean_y2) * v + gamma * s_ghy / width
        u = alpha_bkw * u + inv_std * (gamma * s_gh / width - kv * mean_y)
        outer = gamma * inv_std
        tl.store(centre_ptr + off, mu, mask=ok)
        tl.store(cg_ptr + off, outer * cg_ls, mask=ok)
        tl.store(cx_ptr + off, outer * cx_ls - kv * inv_std * inv_std, mask=ok)
        tl.store(c0_ptr + off, outer * c0_ls - ku, mask=ok)
        var = alpha_fwd * var + keep * vx + alpha_fwd * keep * delta * delta
        mu += keep * delta
        off += sl
    _store_sums(gw_ptr, gb_ptr, u_end_ptr, v_end_ptr, state, ok, sum_w, sum_b, u, v)


@triton.jit
def _chunk_span(k, chunk, length):
    """The first frame and the frame count of time chunk ``k``."""
    t0 = k * chunk
    return t0, tl.minimum(chunk, length - t0)


@triton.jit
def _chunk_lanes(channels, length, chunk, chunks, BLOCK_C: tl.constexpr):
    """A (stream, time chunk, feature block) program's stream p, chunk k, lanes c and their mask,
    the index of its rows in (P, K, C) chunk states, and its frames t0 .. t0 + n."""
    p = tl.program_id(0)
    k = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    t0, n = _chunk_span(k, chunk, length)
    return p, k, c, c < channels, (p * chunks + k).to(tl.int64) * channels + c, t0, n


@triton.jit
def _summary_start(BLOCK_C: tl.constexpr):
    """A chunk's control summary before its first sample: A = 1, Ṽ = U0 = U1 = 0."""
    zeros = tl.zeros([BLOCK_C], tl.float32)
    return zeros + 1.0, zeros, zeros, zeros


@triton.jit
def _tracking_summary_kernel(x_ptr, var_ptr, agg_ptr, channels, length, chunk, chunks, sxp, sxc, sxl, alpha,
                             HAS_VAR: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """Pass 1 of the time-parallel tracking, per (stream, time chunk): the chunk's effect on μ and σ²
    as a function of the μ it starts from. With r the chunk's first sample and μ̃ the tracking
    started from r, the true μ_{t-1} = μ̃_{t-1} + α^j (μ_in − r) at the chunk's j-th frame, so

        μ_end  = μ̃_end + α^n δ,    σ²_end = α^n σ²_in + S0 + S1 δ + S2 δ²,    δ = μ_in − r,

    with S0, S1, S2 sums over the chunk (Horner form). Centred on r: no cancellation for offset
    features. x is the per-sample mean (x itself for D = 1) and ``var_ptr`` (read with the same
    strides when ``HAS_VAR``) the per-sample variance, which adds (1 − α) σ²(x_t) to S0. Writes
    (r, μ̃_end, S0, S1, S2) per lane into agg (P, K, 5, C)."""
    p = tl.program_id(0)
    k = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = c < channels
    t0, n = _chunk_span(k, chunk, length)
    off = p.to(tl.int64) * sxp + c.to(tl.int64) * sxc + t0.to(tl.int64) * sxl
    r = tl.load(x_ptr + off, mask=ok, other=0.0).to(tl.float32)
    keep = 1.0 - alpha
    weight = alpha * keep
    mu = r
    s0 = tl.zeros([BLOCK_C], tl.float32)
    s1 = tl.zeros([BLOCK_C], tl.float32)
    s2 = tl.zeros([BLOCK_C], tl.float32)
    power = tl.full([BLOCK_C], 1.0, tl.float32)
    for _ in tl.range(0, n, num_stages=STAGES):
        e = tl.load(x_ptr + off, mask=ok, other=0.0).to(tl.float32) - mu
        if HAS_VAR:
            s0 = alpha * s0 + weight * e * e + keep * tl.load(var_ptr + off, mask=ok, other=0.0)
        else:
            s0 = alpha * s0 + weight * e * e
        s1 = alpha * s1 - 2.0 * weight * e * power
        s2 = alpha * s2 + weight * power * power
        mu += keep * e
        power *= alpha
        off += sxl
    base = ((p * chunks + k) * 5).to(tl.int64) * channels + c
    tl.store(agg_ptr + base, r, mask=ok)
    tl.store(agg_ptr + base + channels, mu, mask=ok)
    tl.store(agg_ptr + base + 2 * channels, s0, mask=ok)
    tl.store(agg_ptr + base + 3 * channels, s1, mask=ok)
    tl.store(agg_ptr + base + 4 * channels, s2, mask=ok)


@triton.jit
def _tracking_entry_kernel(agg_ptr, mu0_ptr, var0_ptr, mu_in_ptr, var_in_ptr, channels, length, chunk, chunks,
                           log_alpha, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """Pass 2, per stream: walk the chunks in order, giving each the μ and σ² it starts from."""
    p = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = c < channels
    mu = tl.load(mu0_ptr + p * channels + c, mask=ok, other=0.0)
    var = tl.load(var0_ptr + p * channels + c, mask=ok, other=1.0)
    for k in tl.range(0, chunks, num_stages=STAGES):
        entry = (p * chunks + k).to(tl.int64) * channels + c
        tl.store(mu_in_ptr + entry, mu, mask=ok)
        tl.store(var_in_ptr + entry, var, mask=ok)
        _, n = _chunk_span(k, chunk, length)
        decay = tl.exp(n.to(tl.float32) * log_alpha)
        base = ((p * chunks + k) * 5).to(tl.int64) * channels + c
        delta = mu - tl.load(agg_ptr + base, mask=ok, other=0.0)
        s0 = tl.load(agg_ptr + base + 2 * channels, mask=ok, other=0.0)
        s1 = tl.load(agg_ptr + base + 3 * channels, mask=ok, other=0.0)
        s2 = tl.load(agg_ptr + base + 4 * channels, mask=ok, other=0.0)
        var = decay * var + s0 + (s1 + s2 * delta) * delta
        mu = tl.load(agg_ptr + base + channels, mask=ok, other=0.0) + decay * delta


@triton.jit
def _d1_forward_kernel(x_ptr, out_ptr, mu_in_ptr, var_in_ptr, w_ptr, b_ptr, mu_end_ptr, var_end_ptr, channels, length,
                       chunk, chunks, sxp, sxc, sxl, sop, soc, sol, alpha, eps,
                       AFFINE: tl.constexpr, LS: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """One-component samples, one (stream, time chunk) per program, from the μ, σ² the chunk starts
    with: out_t = LS(γ (x_t − μ) / sqrt(σ² + ε) + β), then μ += (1 − α) d, σ² = α (σ² + (1 − α) d²).
    Writes the chunk's end statistics (the last chunk's are the stream's)."""
    p, k, c, ok, state, t0, n = _chunk_lanes(channels, length, chunk, chunks, BLOCK_C)
    mu = tl.load(mu_in_ptr + state, mask=ok, other=0.0)
    var = tl.load(var_in_ptr + state, mask=ok, other=1.0)
    gamma, beta = _affine_params(w_ptr, b_ptr, c, ok, AFFINE, BLOCK_C)
    keep = 1.0 - alpha
    x_off = p.to(tl.int64) * sxp + c.to(tl.int64) * sxc + t0.to(tl.int64) * sxl
    o_off = p.to(tl.int64) * sop + c.to(tl.int64) * soc + t0.to(tl.int64) * sol
    for _ in tl.range(0, n, num_stages=STAGES):
        x = tl.load(x_ptr + x_off, mask=ok, other=0.0).to(tl.float32)
        d = x - mu
        h = gamma * d / tl.sqrt(var + eps) + beta
        if LS:
            h = h / tl.sqrt(tl.sum(tl.where(ok, h * h, 0.0), axis=0) / channels + eps)
        tl.store(out_ptr + o_off, h.to(out_ptr.dtype.element_ty), mask=ok)
        mu += keep * d
        var = alpha * (var + keep * d * d)
        x_off += sxl
        o_off += sol
    tl.store(mu_end_ptr + state, mu, mask=ok)
    tl.store(var_end_ptr + state, var, mask=ok)


@triton.jit
def _d1_gradient(x, g, mu, var, gamma, beta, ok, channels, eps, LS: tl.constexpr):
    """One frame of the D = 1 backward before the control process: y, inv_std and g_h (layer
    scaling's exact gradient, g_h = (g − mean_c(g·out) out) / s with out = h / s)."""
    inv_std = 1.0 / tl.sqrt(var + eps)
    y = (x - mu) * inv_std
    if LS:
        h = gamma * y + beta
        inv_s = 1.0 / tl.sqrt(tl.sum(tl.where(ok, h * h, 0.0), axis=0) / channels + eps)
        proj = tl.sum(tl.where(ok, g * h, 0.0), axis=0) * inv_s * inv_s / channels
        gh = (g - proj * h) * inv_s
    else:
        gh = g
    return y, inv_std, gh


@triton.jit
def _d1_control_summary_kernel(x_ptr, g_ptr, mu_in_ptr, var_in_ptr, w_ptr, b_ptr, agg_ptr, channels, length, chunk,
                               chunks, sxp, sxc, sxl, sgp, sgc, sgl, alpha_fwd, alpha_bkw, eps,
                               AFFINE: tl.constexpr, LS: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """Pass 1 of the time-parallel control process, per (stream, time chunk): v is linear in the v
    the chunk starts from, v_end = A v_in + Ṽ (A the product of (1 − k y²)), and u in both,
    u_end = α_b^n u_in + U0 + U1 v_in. Writes (A, Ṽ, U0, U1) per lane into agg (P, K, 4, C)."""
    p, k, c, ok, state, t0, n = _chunk_lanes(channels, length, chunk, chunks, BLOCK_C)
    mu = tl.load(mu_in_ptr + state, mask=ok, other=0.0)
    var = tl.load(var_in_ptr + state, mask=ok, other=1.0)
    gamma, beta = _affine_params(w_ptr, b_ptr, c, ok, AFFINE, BLOCK_C)
    keep = 1.0 - alpha_fwd
    kb = 1.0 - alpha_bkw
    x_off = p.to(tl.int64) * sxp + c.to(tl.int64) * sxc + t0.to(tl.int64) * sxl
    g_off = p.to(tl.int64) * sgp + c.to(tl.int64) * sgc + t0.to(tl.int64) * sgl
    a, v, u0, u1 = _summary_start(BLOCK_C)
    for _ in tl.range(0, n, num_stages=STAGES):
        x = tl.load(x_ptr + x_off, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + g_off, mask=ok, other=0.0).to(tl.float32)
        y, inv_std, gh = _d1_gradient(x, g, mu, var, gamma, beta, ok, channels, eps, LS)
        a, v, u0, u1 = _control_summary_step(a, v, u0, u1, inv_std, y, y * y, gamma * gh, gamma * gh * y, alpha_bkw,
                                             kb)
        d = x - mu
        mu += keep * d
        var = alpha_fwd * (var + keep * d * d)
        x_off += sxl
        g_off += sgl
    _store_control_summary(agg_ptr, p, k, chunks, channels, c, ok, a, v, u0, u1)


@triton.jit
def _control_entry_kernel(agg_ptr, u0_ptr, v0_ptr, u_in_ptr, v_in_ptr, channels, length, chunk, chunks, log_alpha,
                          BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """Pass 2 of the control process, per stream: each chunk's starting u and v."""
    p = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = c < channels
    u = tl.load(u0_ptr + p * channels + c, mask=ok, other=0.0)
    v = tl.load(v0_ptr + p * channels + c, mask=ok, other=0.0)
    for k in tl.range(0, chunks, num_stages=STAGES):
        entry = (p * chunks + k).to(tl.int64) * channels + c
        tl.store(u_in_ptr + entry, u, mask=ok)
        tl.store(v_in_ptr + entry, v, mask=ok)
        _, n = _chunk_span(k, chunk, length)
        base = ((p * chunks + k) * 4).to(tl.int64) * channels + c
        a = tl.load(agg_ptr + base, mask=ok, other=1.0)
        u = (tl.exp(n.to(tl.float32) * log_alpha) * u + tl.load(agg_ptr + base + 2 * channels, mask=ok, other=0.0)
             + tl.load(agg_ptr + base + 3 * channels, mask=ok, other=0.0) * v)
        v = a * v + tl.load(agg_ptr + base + channels, mask=ok, other=0.0)


@triton.jit
def _d1_backward_kernel(x_ptr, g_ptr, gx_ptr, mu_in_ptr, var_in_ptr, u_in_ptr, v_in_ptr, w_ptr, b_ptr, gw_ptr, gb_ptr,
                        u_end_ptr, v_end_ptr, channels, length, chunk, chunks, sxp, sxc, sxl, sgp, sgc, sgl, sop, soc,
                        sol, alpha_fwd, alpha_bkw, eps,
                        AFFINE: tl.constexpr, LS: tl.constexpr, BLOCK_C: tl.constexpr, STAGES: tl.constexpr):
    """The backward of ``_d1_forward_kernel`` from x and g alone, one (stream, time chunk) per
    program from the μ, σ², u, v the chunk starts with, in forward order: the control process
        z = γ g_h − k v y,  v += z y,  x' = z / sqrt(σ² + ε) − k u,  u += x'.
    Writes ∂L/∂x, the chunk's Σ g_h·y and Σ g_h, and its end (u, v)."""
    p, k, c, ok, state, t0, n = _chunk_lanes(channels, length, chunk, chunks, BLOCK_C)
    mu, var, u, v = _stream_state(mu_in_ptr, var_in_ptr, u_in_ptr, v_in_ptr, state, ok)
    gamma, beta = _affine_params(w_ptr, b_ptr, c, ok, AFFINE, BLOCK_C)
    keep = 1.0 - alpha_fwd
    kb = 1.0 - alpha_bkw
    sum_w = tl.zeros([BLOCK_C], tl.float32)
    sum_b = tl.zeros([BLOCK_C], tl.float32)
    x_off = p.to(tl.int64) * sxp + c.to(tl.int64) * sxc + t0.to(tl.int64) * sxl
    g_off = p.to(tl.int64) * sgp + c.to(tl.int64) * sgc + t0.to(tl.int64) * sgl
    o_off = p.to(tl.int64) * sop + c.to(tl.int64) * soc + t0.to(tl.int64) * sol
    for _ in tl.range(0, n, num_stages=STAGES):
        x = tl.load(x_ptr + x_off, mask=ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + g_off, mask=ok, other=0.0).to(tl.float32)
        y, inv_std, gh = _d1_gradient(x, g, mu, var, gamma, beta, ok, channels, eps, LS)
        sum_w += gh * y
        sum_b += gh
        z = gamma * gh - kb * v * y
        v += z * y
        xp = z * inv_std - kb * u
        u += xp
        tl.store(gx_ptr + o_off, xp.to(gx_ptr.dtype.element_ty), mask=ok)
        d = x - mu
        mu += keep * d
        var = alpha_fwd * (var + keep * d * d)
        x_off += sxl
        g_off += sgl
        o_off += sol
    _store_sums(gw_ptr, gb_ptr, u_end_ptr, v_end_ptr, state, ok, sum_w, sum_b, u, v)


# --------------------------------------------------------------------------- launch helpers
def row_blocks(width: int) -> tuple[int, int]:
    """(rows, components) of a row kernel's tile for rows of ``width`` components: a chunk of the
    row that wastes few masked lanes (the smallest padding among 16..128, the larger on ties),
    and as many rows as fill ``TILE`` elements."""
    if width <= 16:
        block_d = triton.next_power_of_2(max(width, 1))
    else:
        block_d = min((128, 64, 32, 16), key=lambda b: (-(-width // b) * b - width) / width + (0.02 if b < 32 else 0))
    return max(1, TILE // block_d), block_d


def time_chunks(length: int, streams: int) -> tuple[int, int]:
    """(frames per chunk, chunks) of the time-parallel kernels: enough (stream, chunk)
    programs to fill a GPU (about ``TARGET_PROGRAMS``), chunks of 32..256 frames (shorter chunks
    would move more summary state than data); one chunk (the plain sequential loop, no summary
    passes) when the stream is short. ``CHUNK`` forces it."""
    if CHUNK is not None:
        chunk = CHUNK
    else:
        wanted = triton.next_power_of_2(triton.cdiv(length * max(streams, 1), TARGET_PROGRAMS))
        chunk = min(256, max(MIN_CHUNK, wanted))
    chunk = max(1, min(chunk, length))
    return chunk, triton.cdiv(length, chunk)


def lane_blocks(channels: int, layer_scaling: bool) -> tuple[int, int, int]:
    """(lanes per program, programs per stream, warps) of the per-stream kernels. Layer scaling
    reduces over all features of a sample, so one program holds them all; otherwise features are
    split over programs for parallelism."""
    if layer_scaling:
        if channels > MAX_LANES:
            raise ValueError(f"OnlineNorm on the Triton path with layer scaling takes at most {MAX_LANES} features, "
                             f"got {channels}; use ecm=None or 'ac' for wider layers")
        block = triton.next_power_of_2(channels)
    else:
        block = min(triton.next_power_of_2(channels), 128)
    return block, triton.cdiv(channels, block), max(1, min(16, block // 128))  # <= 4 lanes per thread up to 2048


def _row_order(x4: Tensor) -> list[int]:
    """The three row axes (P, C, L) of x4 from the outermost to the innermost in memory."""
    return sorted(range(3), key=lambda i: (-x4.stride(i), -i))


def _stat(x4: Tensor, order: list[int]) -> Tensor:
    """A float32 (P, C, L) statistics tensor laid out in x4's row order (dense)."""
    shape = [x4.shape[i] for i in order]
    dense = torch.empty(shape, device=x4.device, dtype=torch.float32)
    inverse = [order.index(i) for i in range(3)]
    return dense.permute(inverse)


def _flat(order: list[int], *tensors: Tensor) -> bool:
    """All (P, C, L, D) tensors dense with D innermost and rows in ``order``: one flat index serves."""
    for t in tensors:
        expected = t.shape[3] if t.shape[3] > 1 else 1
        for i in reversed(order):
            if t.shape[i] > 1 and t.stride(i) != expected:
                return False
            expected *= t.shape[i]
        if t.shape[3] > 1 and t.stride(3) != 1:
            return False
    return True


def _rows_args(t: Tensor, order: list[int]) -> list[int]:
    return [t.stride(order[0]), t.stride(order[1]), t.stride(order[2])]


def _like(x: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty tensor shaped like x in x's memory layout when x is dense (``empty_like``
    preserves it), contiguous otherwise."""
    return torch.empty_like(x, dtype=dtype)


def _state(t: Tensor, streams: int, channels: int) -> Tensor:
    return t.detach().to(torch.float32).expand(streams, channels).contiguous()


def _params(weight: Tensor | None, bias: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor, bool]:
    if weight is None:
        return like, like, False
    return weight.detach().float().contiguous(), bias.detach().float().contiguous(), True


# --------------------------------------------------------------------------- the layer, D > 1
def forward(x4: Tensor, weight, bias, mu0: Tensor, var0: Tensor, alpha: float, eps: float, layer_scaling: bool):
    """out = LS(γ · OnlineNorm(x) + β) for x4 (P, C, L, D), any strides.

    Returns out (x4's shape and dtype, x4's row order), the end statistics μ, σ² (P, C) float32,
    and the per-sample moments (mean, var) that ``backward`` needs.
    """
    streams, channels, length, width = x4.shape
    order = _row_order(x4)
    n1, n2 = x4.shape[order[1]], x4.shape[order[2]]
    rows = streams * channels * length
    mean, var = _stat(x4, order), _stat(x4, order)
    out = _like(x4, x4.dtype)
    mu_end = torch.empty(streams, channels, device=x4.device, dtype=torch.float32)
    var_end = torch.empty_like(mu_end)
    if rows == 0 or width == 0:
        return out, _state(mu0, streams, channels), _state(var0, streams, channels), mean, var
    block_r, block_d = row_blocks(width)
    grid = (triton.cdiv(rows, block_r),)
    stat_strides = _rows_args(mean, order)
    _moments_kernel[grid](x4, mean, var, rows, width, n1, n2, *_rows_args(x4, order), x4.stride(3), *stat_strides,
                          BLOCK_R=block_r, BLOCK_D=block_d, STAGES=STAGES)
    centre, scale, shift = _stat(x4, order), _stat(x4, order), _stat(x4, order)
    gamma, beta, affine = _params(weight, bias, mu_end)
    block_c, programs, warps = lane_blocks(channels, layer_scaling)
    chunk, chunks = time_chunks(length, streams)
    mu_in, var_in = _entry_states(mean, var, mu0, var0, alpha, chunk, chunks)
    mu_ends, var_ends = torch.empty_like(mu_in), torch.empty_like(var_in)
    _track_kernel[(streams, chunks, programs)](
        mean, var, mu_in, var_in, gamma, beta, centre, scale, shift, mu_ends, var_ends, channels, length, chunk,
        chunks, *mean.stride(), float(alpha), float(eps),
        AFFINE=affine, LS=bool(layer_scaling), BLOCK_C=block_c, STAGES=STAGES, num_warps=warps)
    mu_end, var_end = mu_ends[:, -1], var_ends[:, -1]
    if _flat(order, x4, out):
        total = x4.numel()
        _affine_flat_kernel[(triton.cdiv(total, TILE),)](x4, centre, scale, shift, out, total, width, BLOCK=TILE)
    else:
        _affine_rows_kernel[grid](x4, centre, scale, shift, out, rows, width, n1, n2, *_rows_args(x4, order),
                                  x4.stride(3), *_rows_args(out, order), out.stride(3), *stat_strides,
                                  BLOCK_R=block_r, BLOCK_D=block_d, STAGES=STAGES)
    return out, mu_end, var_end, mean, var


def backward(x4: Tensor, g4: Tensor, mean: Tensor, var: Tensor, weight, bias, mu0: Tensor, var0: Tensor, u0: Tensor,
             v0: Tensor, alpha_fwd: float, alpha_bkw: float, eps: float, layer_scaling: bool, dtype: torch.dtype):
    """∂L/∂x (in ``dtype``, x4's row order), ∂L/∂γ and ∂L/∂β (C,) float32 (None without affine),
    and the end control state (u, v) (P, C) float32."""
    streams, channels, length, width = x4.shape
    order = _row_order(x4)
    n1, n2 = x4.shape[order[1]], x4.shape[order[2]]
    rows = streams * channels * length
    grad_x = _like(x4, dtype)
    block_r, block_d = row_blocks(width)
    grid = (triton.cdiv(rows, block_r),)
    stat_strides = _rows_args(mean, order)
    sum_g, sum_gc = _stat(x4, order), _stat(x4, order)
    _grad_moments_kernel[grid](g4, x4, mean, sum_g, sum_gc, rows, width, n1, n2, *_rows_args(g4, order), g4.stride(3),
                               *_rows_args(x4, order), x4.stride(3), *stat_strides,
                               BLOCK_R=block_r, BLOCK_D=block_d, STAGES=STAGES)
    centre, cg, cx, c0 = (_stat(x4, order) for _ in range(4))
    chunk, chunks = time_chunks(length, streams)
    sums = torch.empty(4, streams, chunks, channels, device=x4.device, dtype=torch.float32)
    gamma, beta, affine = _params(weight, bias, sums[0])
    block_c, programs, warps = lane_blocks(channels, layer_scaling)
    mu_in, var_in = _entry_states(mean, var, mu0, var0, alpha_fwd, chunk, chunks)

    def summarize(summary):
        _rows_control_summary_kernel[(streams, chunks, programs)](
            mean, var, sum_g, sum_gc, mu_in, var_in, gamma, beta, summary, channels, length, chunk, chunks,
            *mean.stride(), width, float(alpha_fwd), float(alpha_bkw), float(eps),
            AFFINE=affine, LS=bool(layer_scaling), BLOCK_C=block_c, STAGES=STAGES, num_warps=warps)

    u_in, v_in = _control_entries(summarize, u0, v0, alpha_bkw, mu_in, length, chunk)
    _control_kernel[(streams, chunks, programs)](
        mean, var, sum_g, sum_gc, mu_in, var_in, u_in, v_in, gamma, beta, centre, cg, cx, c0, sums[0], sums[1],
        sums[2], sums[3], channels, length, chunk, chunks, *mean.stride(), width, float(alpha_fwd), float(alpha_bkw),
        float(eps), AFFINE=affine, LS=bool(layer_scaling), BLOCK_C=block_c, STAGES=STAGES, num_warps=warps)
    if _flat(order, x4, g4, grad_x):
        total = x4.numel()
        _grad_affine_flat_kernel[(triton.cdiv(total, TILE),)](g4, x4, centre, cg, cx, c0, grad_x, total, width,
                                                             BLOCK=TILE)
    else:
        _grad_affine_rows_kernel[grid](g4, x4, centre, cg, cx, c0, grad_x, rows, width, n1, n2,
                                       *_rows_args(g4, order), g4.stride(3), *_rows_args(x4, order), x4.stride(3),
                                       *_rows_args(grad_x, order), grad_x.stride(3), *stat_strides,
                                       BLOCK_R=block_r, BLOCK_D=block_d, STAGES=STAGES)
    grad_w = sums[0].sum(dim=(0, 1)) if affine else None
    grad_b = sums[1].sum(dim=(0, 1)) if affine else None
    return grad_x, grad_w, grad_b, sums[2][:, -1], sums[3][:, -1]


# --------------------------------------------------------------------------- the layer, D = 1
def _entry_states(source: Tensor, variance: Tensor | None, mu0: Tensor, var0: Tensor, alpha: float, chunk: int,
                  chunks: int):
    """The μ and σ² every time chunk of every stream starts from, (P, K, C) float32: the tracking
    summarized per chunk in parallel, then walked across the chunks (one chunk: the start state).
    ``source`` (P, C, L) is x itself for D = 1, the per-sample means for D > 1 (``variance`` the
    per-sample variances, same strides)."""
    streams, channels, length = source.shape
    mu_in = torch.empty(streams, chunks, channels, device=source.device, dtype=torch.float32)
    var_in = torch.empty_like(mu_in)
    if chunks == 1:
        mu_in[:, 0].copy_(mu0.expand(streams, channels))
        var_in[:, 0].copy_(var0.expand(streams, channels))
        return mu_in, var_in
    block, programs, warps = lane_blocks(channels, False)
    summary = torch.empty(streams, chunks, 5, channels, device=source.device, dtype=torch.float32)
    _tracking_summary_kernel[(streams, chunks, programs)](
        source, source if variance is None else variance, summary, channels, length, chunk, chunks, *source.stride(),
        float(alpha), HAS_VAR=variance is not None, BLOCK_C=block, STAGES=STAGES, num_warps=warps)
    _tracking_entry_kernel[(streams, programs)](
        summary, _state(mu0, streams, channels), _state(var0, streams, channels), mu_in, var_in, channels, length,
        chunk, chunks, math.log(alpha), BLOCK_C=block, STAGES=STAGES, num_warps=warps)
    return mu_in, var_in


def _control_entries(summarize, u0: Tensor, v0: Tensor, alpha_bkw: float, like: Tensor, length: int, chunk: int):
    """The u and v every time chunk starts from, (P, K, C): ``summarize(summary)`` fills the chunks'
    (A, Ṽ, U0, U1) (P, K, 4, C), then they are walked across the chunks."""
    streams, chunks, channels = like.shape
    u_in, v_in = torch.empty_like(like), torch.empty_like(like)
    if chunks == 1:
        u_in[:, 0].copy_(u0.expand(streams, channels))
        v_in[:, 0].copy_(v0.expand(streams, channels))
        return u_in, v_in
    summary = torch.empty(streams, chunks, 4, channels, device=like.device, dtype=torch.float32)
    summarize(summary)
    block, programs, warps = lane_blocks(channels, False)
    _control_entry_kernel[(streams, programs)](
        summary, _state(u0, streams, channels), _state(v0, streams, channels), u_in, v_in, channels, length, chunk,
        chunks, math.log(alpha_bkw), BLOCK_C=block, STAGES=STAGES, num_warps=warps)
    return u_in, v_in


def forward_d1(x: Tensor, weight, bias, mu0: Tensor, var0: Tensor, alpha: float, eps: float, layer_scaling: bool):
    """``cpu_d1.forward_d1`` on the GPU: x (P, C, L) any strides -> out (x's dtype and memory
    order), μ, σ² (P, C) float32. Time-parallel: each (stream, chunk of frames) is a program,
    started from the statistics ``_entry_states`` gives it. NaN/inf reach μ and σ², where
    ``speechnorm.norm.finite`` checks."""
    streams, channels, length = x.shape
    out = _like(x, x.dtype)
    if not (streams and channels and length):
        return out, _state(mu0, streams, channels), _state(var0, streams, channels)
    chunk, chunks = time_chunks(length, streams)
    mu_in, var_in = _entry_states(x, None, mu0, var0, alpha, chunk, chunks)
    mu_end, var_end = torch.empty_like(mu_in), torch.empty_like(var_in)
    gamma, beta, affine = _params(weight, bias, mu_in)
    block_c, programs, warps = lane_blocks(channels, layer_scaling)
    _d1_forward_kernel[(streams, chunks, programs)](
        x, out, mu_in, var_in, gamma, beta, mu_end, var_end, channels, length, chunk, chunks, *x.stride(),
        *out.stride(), float(alpha), float(eps),
        AFFINE=affine, LS=bool(layer_scaling), BLOCK_C=block_c, STAGES=STAGES, num_warps=warps)
    return out, mu_end[:, -1], var_end[:, -1]


def backward_d1(x: Tensor, grad_out: Tensor, weight, bias, mu0: Tensor, var0: Tensor, u0: Tensor, v0: Tensor,
                alpha_fwd: float, alpha_bkw: float, eps: float, layer_scaling: bool):
    """``cpu_d1.backward_d1`` on the GPU: ∂L/∂x (x's dtype), Σ_t g_h·y and Σ_t g_h (P, C), (u, v).
    Time-parallel like the forward: the chunks' starting μ, σ² again (from x), then u, v
    summarized per chunk and walked across the chunks, then every chunk's gradient at once."""
    streams, channels, length = x.shape
    grad_x = _like(x, x.dtype)
    if not (streams and channels and length):
        zeros = torch.zeros(streams, channels, device=x.device, dtype=torch.float32)
        return grad_x, zeros, zeros.clone(), _state(u0, streams, channels), _state(v0, streams, channels)
    chunk, chunks = time_chunks(length, streams)
    mu_in, var_in = _entry_states(x, None, mu0, var0, alpha_fwd, chunk, chunks)
    gamma, beta, affine = _params(weight, bias, mu_in)
    block_c, programs, warps = lane_blocks(channels, layer_scaling)

    def summarize(summary):
        _d1_control_summary_kernel[(streams, chunks, programs)](
            x, grad_out, mu_in, var_in, gamma, beta, summary, channels, length, chunk, chunks, *x.stride(),
            *grad_out.stride(), float(alpha_fwd), float(alpha_bkw), float(eps),
            AFFINE=affine, LS=bool(layer_scaling), BLOCK_C=block_c, STAGES=STAGES, num_warps=warps)

    u_in, v_in = _control_entries(summarize, u0, v0, alpha_bkw, mu_in, length, chunk)
    sums = torch.empty(4, streams, chunks, channels, device=x.device, dtype=torch.float32)
    _d1_backward_kernel[(streams, chunks, programs)](
        x, grad_out, grad_x, mu_in, var_in, u_in, v_in, gamma, beta, sums[0], sums[1], sums[2], sums[3], channels,
        length, chunk, chunks, *x.stride(), *grad_out.stride(), *grad_x.stride(), float(alpha_fwd), float(alpha_bkw),
        float(eps), AFFINE=affine, LS=bool(layer_scaling), BLOCK_C=block_c, STAGES=STAGES, num_warps=warps)
    return grad_x, sums[0].sum(dim=1), sums[1].sum(dim=1), sums[2][:, -1], sums[3][:, -1]
