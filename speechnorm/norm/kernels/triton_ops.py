"""Triton kernels for Online Norm's big-tensor passes, on rows of D contiguous components.

The fused algorithm (``speechnorm.norm.functional``) touches the big tensors only through:
- ``moments``: per row, mean and variance (two-pass in fp32: exact, no cancellation);
- ``affine``: out = x * scale[row] + shift[row], written in the input's dtype;
- ``grad_moments``: per row, Σ g and Σ g·x in one pass over g and x;
- ``grad_affine``: grad_x = g * cg[row] + x * cx[row] + c0[row];
- ``scan``: h_t = a_t h_{t-1} + b_t for many short sequences (one lane per sequence).
Each runs as one kernel over 2-D tiles (rows × components), reading bf16/fp16/fp32 inputs and
accumulating in fp32. ``TRITON_INTERPRET=1`` runs the very same kernels on the CPU, which is how
the tests check them without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_BLOCK_D = 1024
TILE = 1024  # elements per program's tile


def _blocks(rows: int, width: int) -> tuple[int, int]:
    block_d = min(triton.next_power_of_2(max(width, 1)), MAX_BLOCK_D)
    block_r = max(1, min(TILE // block_d, triton.next_power_of_2(rows)))
    return block_r, block_d


@triton.jit
def _moments_kernel(x_ptr, mean_ptr, var_ptr, rows, width, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    base = row.to(tl.int64)[:, None] * width
    total = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    start = 0
    while start < width:  # a while loop: the interpreter cannot range() over runtime args
        col = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (col < width)[None, :]
        total += tl.load(x_ptr + base + col[None, :], mask=ok, other=0.0).to(tl.float32)
        start += BLOCK_D
    mean = tl.sum(total, axis=1) / width
    spread = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    start = 0
    while start < width:  # a while loop: the interpreter cannot range() over runtime args
        col = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (col < width)[None, :]
        x = tl.load(x_ptr + base + col[None, :], mask=ok, other=0.0).to(tl.float32)
        centred = tl.where(ok, x - mean[:, None], 0.0)
        spread += centred * centred
        start += BLOCK_D
    tl.store(mean_ptr + row, mean, mask=row_ok)
    tl.store(var_ptr + row, tl.sum(spread, axis=1) / width, mask=row_ok)


@triton.jit
def _affine_kernel(x_ptr, scale_ptr, shift_ptr, out_ptr, rows, width, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    base = row.to(tl.int64)[:, None] * width
    scale = tl.load(scale_ptr + row, mask=row_ok, other=0.0)[:, None]
    shift = tl.load(shift_ptr + row, mask=row_ok, other=0.0)[:, None]
    start = 0
    while start < width:  # a while loop: the interpreter cannot range() over runtime args
        col = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (col < width)[None, :]
        x = tl.load(x_ptr + base + col[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + base + col[None, :], (x * scale + shift).to(out_ptr.dtype.element_ty), mask=ok)
        start += BLOCK_D


@triton.jit
def _grad_moments_kernel(g_ptr, x_ptr, sum_g_ptr, sum_gx_ptr, rows, width, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    base = row.to(tl.int64)[:, None] * width
    sum_g = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    sum_gx = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    start = 0
    while start < width:  # a while loop: the interpreter cannot range() over runtime args
        col = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (col < width)[None, :]
        g = tl.load(g_ptr + base + col[None, :], mask=ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + base + col[None, :], mask=ok, other=0.0).to(tl.float32)
        sum_g += g
        sum_gx += g * x
        start += BLOCK_D
    tl.store(sum_g_ptr + row, tl.sum(sum_g, axis=1), mask=row_ok)
    tl.store(sum_gx_ptr + row, tl.sum(sum_gx, axis=1), mask=row_ok)


@triton.jit
def _grad_affine_kernel(
    g_ptr, x_ptr, cg_ptr, cx_ptr, c0_ptr, out_ptr, rows, width, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = row < rows
    base = row.to(tl.int64)[:, None] * width
    cg = tl.load(cg_ptr + row, mask=row_ok, other=0.0)[:, None]
    cx = tl.load(cx_ptr + row, mask=row_ok, other=0.0)[:, None]
    c0 = tl.load(c0_ptr + row, mask=row_ok, other=0.0)[:, None]
    start = 0
    while start < width:  # a while loop: the interpreter cannot range() over runtime args
        col = start + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (col < width)[None, :]
        g = tl.load(g_ptr + base + col[None, :], mask=ok, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + base + col[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + base + col[None, :], (g * cg + x * cx + c0).to(out_ptr.dtype.element_ty), mask=ok)
        start += BLOCK_D


@triton.jit
def _scan_kernel(a_ptr, b_ptr, h0_ptr, h_ptr, lanes, length, CONSTANT: tl.constexpr, BLOCK: tl.constexpr):
    """Time-major (L, lanes) inputs: step t reads one contiguous stretch of lanes."""
    lane = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = lane < lanes
    h = tl.load(h0_ptr + lane, mask=ok, other=0.0)
    if CONSTANT:
        a_const = tl.load(a_ptr)
    t = 0
    while t < length:  # a while loop: the interpreter cannot range() over runtime args
        offset = t * lanes + lane
        if CONSTANT:
            a = a_const
        else:
            a = tl.load(a_ptr + offset, mask=ok, other=0.0)
        h = a * h + tl.load(b_ptr + offset, mask=ok, other=0.0)
        tl.store(h_ptr + offset, h, mask=ok)
        t += 1


# --------------------------------------------------------------------------- wrappers
def _rows(x: Tensor) -> tuple[Tensor, int, int]:
    x = x.contiguous()
    width = x.shape[-1]
    return x, x.numel() // max(width, 1), width


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """(..., D) -> mean, var (...) in fp32."""
    x, rows, width = _rows(x)
    mean = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    var = torch.empty_like(mean)
    block_r, block_d = _blocks(rows, width)
    _moments_kernel[(triton.cdiv(rows, block_r),)](x, mean, var, rows, width, BLOCK_R=block_r, BLOCK_D=block_d)
    return mean, var


def affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """x (..., D) * scale (...) + shift (...), in x's dtype."""
    x, rows, width = _rows(x)
    out = torch.empty_like(x)
    block_r, block_d = _blocks(rows, width)
    coeffs = [c.reshape(-1).to(torch.float32).contiguous() for c in (scale, shift)]
    _affine_kernel[(triton.cdiv(rows, block_r),)](x, *coeffs, out, rows, width, BLOCK_R=block_r, BLOCK_D=block_d)
    return out


def grad_moments(grad: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Σ_D g and Σ_D g·x per row, fp32."""
    grad, rows, width = _rows(grad)
    x = x.contiguous()
    sum_g = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    sum_gx = torch.empty_like(sum_g)
    block_r, block_d = _blocks(rows, width)
    _grad_moments_kernel[(triton.cdiv(rows, block_r),)](
        grad, x, sum_g, sum_gx, rows, width, BLOCK_R=block_r, BLOCK_D=block_d
    )
    return sum_g, sum_gx


def grad_affine(grad: Tensor, x: Tensor, cg: Tensor, cx: Tensor, c0: Tensor, dtype: torch.dtype) -> Tensor:
    """g * cg + x * cx + c0 per row, written in ``dtype``."""
    grad, rows, width = _rows(grad)
    x = x.contiguous()
    out = torch.empty(x.shape, device=x.device, dtype=dtype)
    block_r, block_d = _blocks(rows, width)
    coeffs = [c.reshape(-1).to(torch.float32).contiguous() for c in (cg, cx, c0)]
    _grad_affine_kernel[(triton.cdiv(rows, block_r),)](
        grad, x, *coeffs, out, rows, width, BLOCK_R=block_r, BLOCK_D=block_d
    )
    return out


def scan(decay: float | Tensor, inputs: Tensor, initial: Tensor) -> Tensor:
    """``h_t = decay_t h_{t-1} + inputs_t`` along the last axis; see ``speechnorm.norm.scan``."""
    lead, length = inputs.shape[:-1], inputs.shape[-1]
    lanes = inputs.numel() // max(length, 1)
    if length == 0 or lanes == 0:
        return inputs.clone()
    b = inputs.reshape(lanes, length).t().contiguous()  # (L, lanes): time-major
    constant = not isinstance(decay, Tensor)
    if constant:
        a = torch.tensor([decay], device=inputs.device, dtype=inputs.dtype)
    else:
        a = decay.expand_as(inputs).reshape(lanes, length).t().contiguous().to(inputs.dtype)
    h0 = initial.expand(lead).reshape(lanes).to(inputs.dtype).contiguous()
    h = torch.empty_like(b)
    block = min(triton.next_power_of_2(lanes), 256)
    _scan_kernel[(triton.cdiv(lanes, block),)](a, b, h0, h, lanes, length, CONSTANT=constant, BLOCK=block)
    return h.t().reshape(*lead, length)
