"""First-order linear recurrences, scanned in log depth.

Every stateful normalizer in this package reduces its sequential part to

    h_t = a_t * h_{t-1} + b_t,      t = 0 .. L-1,   h_{-1} = h0,

over a small tensor of statistics (one sequence per stream and feature). The per-sample
reductions and the elementwise normalize are fully parallel; this module is the one place that
walks along the stream, and it does so with a Hillis–Steele scan: ceil(log2 L) tensor-wide
steps instead of L Python iterations.
"""

from __future__ import annotations

import torch
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
    length = inputs.shape[-1]
    if length == 0:
        return inputs.clone()
    constant = not isinstance(decay, Tensor)
    first_decay = decay if constant else decay[..., 0]
    # Fold the initial state into the first input: h_0 = a_0 h_{-1} + b_0.
    h = torch.cat(((inputs[..., :1] + (first_decay * initial).unsqueeze(-1)), inputs[..., 1:]), dim=-1)
    # Invariant before the step with stride s: h[t] sums inputs over the window (t - s, t],
    # and coeff[t] is the product of the decays over that same window.
    coeff = None if constant else decay
    stride = 1
    while stride < length:
        if constant:
            reached = torch.add(h[..., stride:], h[..., :-stride], alpha=decay**stride)
        else:
            reached = torch.addcmul(h[..., stride:], coeff[..., stride:], h[..., :-stride])
            coeff = torch.cat((coeff[..., :stride], coeff[..., stride:] * coeff[..., :-stride]), dim=-1)
        h = torch.cat((h[..., :stride], reached), dim=-1)
        stride *= 2
    return h


def shift_in(initial: Tensor, sequence: Tensor) -> Tensor:
    """The states *before* each input: ``(initial, h_0, ..., h_{L-2})`` along the last axis."""
    return torch.cat((initial.unsqueeze(-1).expand_as(sequence[..., :1]), sequence[..., :-1]), dim=-1)
