"""The sqrt(L)-chunked linear scan against the obvious sequential loop."""

import pytest
import torch

from speechnorm.norm.scan import linear_scan, shift_in


def loop(decay, inputs, initial):
    h, out = initial, []
    for t in range(inputs.shape[-1]):
        a = decay if isinstance(decay, float) else decay[..., t]
        h = a * h + inputs[..., t]
        out.append(h)
    return torch.stack(out, dim=-1)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 8, 64, 100, 257])
@pytest.mark.parametrize("constant", [True, False])
def test_linear_scan_matches_loop(length, constant):
    inputs = torch.randn(3, 4, length, dtype=torch.float64)
    initial = torch.randn(3, 4, dtype=torch.float64)
    decay = 0.97 if constant else torch.rand(3, 4, length, dtype=torch.float64) * 2 - 0.5  # signs and |a| > 1 too
    torch.testing.assert_close(linear_scan(decay, inputs, initial), loop(decay, inputs, initial))


def test_linear_scan_broadcasts_initial_and_handles_empty():
    inputs = torch.randn(2, 5, 9)
    torch.testing.assert_close(linear_scan(0.5, inputs, torch.tensor(1.0)), loop(0.5, inputs, torch.ones(2, 5)))
    assert linear_scan(0.5, torch.zeros(2, 0), torch.zeros(2)).shape == (2, 0)


def test_shift_in_prepends_initial():
    seq = torch.arange(6.0).view(2, 3)
    assert torch.equal(shift_in(torch.tensor([-1.0, -2.0]), seq), torch.tensor([[-1.0, 0, 1], [-2.0, 3, 4]]))


@pytest.mark.parametrize("length", [1, 4, 9])
def test_linear_scan_leaves_its_inputs_alone(length):
    inputs, decay = torch.randn(3, length), torch.rand(3, length)
    kept = inputs.clone(), decay.clone()
    linear_scan(decay, inputs, torch.ones(3))
    linear_scan(0.5, inputs, torch.ones(3))
    assert torch.equal(inputs, kept[0]) and torch.equal(decay, kept[1])
