"""Per-sample moments: fast one-pass where safe, two-pass where the mean dominates."""

import pytest
import torch

from reference import online_norm as ref
from speechnorm.norm import OnlineNorm
from speechnorm.norm.functional import sample_moments


@pytest.mark.parametrize("offset", [0.0, 3.0, 1e2, 1e4])
def test_moments_match_two_pass_float64(offset):
    x = torch.randn(5, 7, 129) * torch.logspace(-3, 1, 7).view(1, 7, 1) + offset
    mean, var = sample_moments(x)
    x64 = x.double()
    torch.testing.assert_close(mean.double(), x64.mean(-1), rtol=1e-6, atol=1e-6 * max(offset, 1))
    torch.testing.assert_close(var.double(), x64.var(-1, correction=0), rtol=1e-4, atol=1e-9)


def test_constant_rows_have_zero_variance_and_single_components_are_exact():
    mean, var = sample_moments(torch.full((3, 4, 50), 1234.5))
    assert torch.equal(var, torch.zeros(3, 4)) and torch.equal(mean, torch.full((3, 4), 1234.5))
    x = torch.randn(6, 3, 1)
    mean, var = sample_moments(x)
    assert torch.equal(mean, x[..., 0]) and torch.equal(var, torch.zeros(6, 3))


def test_large_dc_offset_stream_matches_reference():
    """Features riding on a large offset (100 std): forward and gradient stay accurate."""
    layer = OnlineNorm(3, alpha_fwd=0.9, stream_axis="time")
    with torch.no_grad():
        layer.running_mean.fill_(100.0)
    x = (torch.randn(2, 3, 40, 16) + 100.0).requires_grad_(True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    zeros = torch.zeros(3)
    for b in range(2):
        want = ref.layer(x.detach()[b].transpose(0, 1), grad_out[b].transpose(0, 1), mu=torch.full((3,), 100.0),
                         var=torch.ones(3), u=zeros, v=zeros, weight=layer.weight, bias=layer.bias, ecm="ls",
                         alpha_fwd=0.9, alpha_bkw=layer.alpha_bkw, eps=layer.eps)
        torch.testing.assert_close(out.detach()[b].transpose(0, 1).double(), want["out"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(x.grad[b].transpose(0, 1).double(), want["grad_x"], atol=1e-4, rtol=1e-3)
