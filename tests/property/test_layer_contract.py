"""The streaming contract for every building block: scanning step == forward, causality."""

import pytest
import torch

from speechnorm.models.layers import (
    GRU, LSTM, TAC, Activation, CausalConv1d, CausalConv2d, FreqTransposedConv, Pointwise, Residual, Sequential,
)
from speechnorm.norm import make_norm

LAYERS = {
    "pointwise": (lambda: Pointwise(5, 7), (2, 5, 9)),
    "pointwise_2d": (lambda: Pointwise(5, 7), (2, 5, 9, 6)),
    "prelu": (lambda: Activation(5), (2, 5, 9, 6)),
    "causal_conv2d": (lambda: CausalConv2d(3, 4, in_freq=11, kernel_time=3, kernel_freq=3, stride_freq=2), (2, 3, 9, 11)),
    "freq_transposed_conv": (lambda: FreqTransposedConv(4, 3), (2, 4, 9, 6)),
    "causal_conv1d_dilated": (lambda: CausalConv1d(5, 6, kernel=3, dilation=2), (2, 5, 9)),
    "gru": (lambda: GRU(5, 6, num_layers=2), (2, 5, 9)),
    "lstm": (lambda: LSTM(5, 6, num_layers=2), (2, 5, 9)),
    "residual_gru_online": (lambda: Residual(Sequential(GRU(5, 5), make_norm("online", 5))), (2, 5, 9)),
    "conv_norm_act": (
        lambda: Sequential(CausalConv2d(3, 4, in_freq=7), make_norm("online", 4), Activation(4)), (2, 3, 9, 7)
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_step_scan_equals_forward_and_is_causal(name):
    make, shape = LAYERS[name]
    layer = make().eval()
    x = torch.randn(shape)
    with torch.no_grad():
        whole = layer(x)
        state = layer.initial_state(shape[0])
        assert isinstance(state, tuple)
        frames = []
        for t in range(shape[2]):
            y_t, state = layer.step(x[:, :, t], state)
            frames.append(y_t)
        torch.testing.assert_close(torch.stack(frames, dim=2), whole, atol=1e-5, rtol=1e-5)
        changed = x.clone()
        changed[:, :, 5:] = torch.randn_like(changed[:, :, 5:])
        torch.testing.assert_close(layer(changed)[:, :, :5], whole[:, :, :5])


@pytest.mark.parametrize("mics", [1, 2, 5])
def test_tac_is_permutation_equivariant_for_any_mic_count(mics):
    tac = TAC(6, 8)
    x = torch.randn(2, mics, 6, 9)
    order = torch.randperm(mics)
    torch.testing.assert_close(tac(x[:, order]), tac(x)[:, order], atol=1e-6, rtol=1e-6)
    frames = torch.stack([tac.step(x[..., t], ())[0] for t in range(9)], dim=-1)
    torch.testing.assert_close(frames, tac(x))


def test_tac_mixes_information_across_mics():
    tac = TAC(4, 8)
    x = torch.randn(1, 3, 4, 5)
    other = x.clone()
    other[:, 2] += 1.0
    assert not torch.allclose(tac(x)[:, 0], tac(other)[:, 0])
