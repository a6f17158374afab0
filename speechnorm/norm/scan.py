"""First-order linear recurrences over small statistics, scanned in O(L) work.

Every stateful normalizer in this package reduces its sequential part to

    h_t = a_t * h_{t-1} + b_t,      t = 0 .. L-1,   h_{-1} = h0,

over a tensor of statistics (one sequence per stream and feature). The per-sample reductions
and the elementwise normalize are fully parallel; this module is the one place that walks along
the stream. It splits the L steps into about sqrt(L) chunks of about sqrt(L) steps and runs:
1. within every chunk at once, the recurrence from zero — K in-place steps, each over one
   contiguous slab holding position i of every chunk of every sequence;
2. across chunks, the state entering each chunk — nC small steps;
3. one fix-up pass adding each chunk's entering state, decayed, to its positions.
That is O(L) work with about 2 sqrt(L) tensor operations, and no division (stable for any decay,
zero or negative included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_scan(decay: float | Tensor, inputs: Tensor, initial: Tensor) -> Tensor:
    """Solve ``h_t = decay_t * h_{t-1} + inputs_t`` along the last axis.

    Args:
        decay: a constant ``a`` (float), or a tensor ``a_t`` of the same shape as ``inputs``.
        inputs: ``b_t`` of shape ``(..., L)``.
        initial: ``h_{-1}`` of shape ``(...)`` (broadcastable to ``inputs[..., 0]``).

    Returns:
        ``h`` of shape ``(..., L)``: ``h[..., t]`` is the state after input ``t``.
    """
    lead, length = inputs.shape[:-1], inputs.shape[-1]
    if length == 0:
        return inputs.clone()
    constant = not isinstance(decay, Tensor)
    chunk = math.isqrt(length - 1) + 1  # K = ceil(sqrt(L))
    chunks = -(-length // chunk)
    pad = chunks * chunk - length
    rows = inputs.reshape(-1, length)

    def slabs(t: Tensor, fill: float) -> Tensor:  # (R, L) -> a fresh contiguous (K, R, nC)
        t = F.pad(t, (0, pad), value=fill) if pad else t
        out = t.new_empty((chunk, t.shape[0], chunks))
        return out.copy_(t.view(t.shape[0], chunks, chunk).permute(2, 0, 1))

    local = slabs(rows, 0.0)
    if constant:
        for i in range(1, chunk):
            local[i].add_(local[i - 1], alpha=decay)
        powers = decay ** torch.arange(1, chunk + 1, dtype=local.dtype, device=local.device)
        within = powers.view(chunk, 1, 1)  # decay from a chunk's entry to position i
        across = within[-1].expand(local.shape[1:])
    else:
        coeff = slabs(decay.expand_as(inputs).reshape(-1, length), 1.0)
        for i in range(1, chunk):
            local[i].addcmul_(coeff[i], local[i - 1])
        within = torch.cumprod(coeff, dim=0)
        across = within[-1]
    # The state entering each chunk, chunk by chunk (nC small steps over (R,) vectors).
    entering = torch.empty(chunks, local.shape[1], dtype=local.dtype, device=local.device)
    state = initial.expand(lead).reshape(-1).to(local.dtype)
    ends, across_t = local[-1].t(), across.t()
    for j in range(chunks):
        entering[j] = state
        state = torch.addcmul(ends[j], across_t[j], state)
    local.addcmul_(within, entering.t().unsqueeze(0))
    return local.permute(1, 2, 0).reshape(-1, chunks * chunk)[:, :length].reshape(*lead, length)


def shift_in(initial: Tensor, sequence: Tensor) -> Tensor:
    """The states *before* each input: ``(initial, h_0, ..., h_{L-2})`` along the last axis."""
    return torch.cat((initial.unsqueeze(-1).expand_as(sequence[..., :1]), sequence[..., :-1]), dim=-1)
