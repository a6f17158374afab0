"""OnlineNorm against the per-sample reference loop (tests/reference), both stream axes."""

import copy

import pytest
import torch

from reference import online_norm as ref
from reference.online_norm import randomize
from speechnorm.norm import OnlineNorm

TOL = dict(atol=1e-5, rtol=1e-5)


def batch_stream(x):
    """(N, C, *S) -> the single stream (N, C, D) the batch axis sees."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def time_streams(x):
    """(B, C, T[, F]) -> B streams (T, C, D)."""
    x4 = x if x.dim() == 4 else x.unsqueeze(-1)
    return [x4[b].transpose(0, 1) for b in range(x.shape[0])]


def params(layer):
    return dict(weight=layer.weight, bias=layer.bias, ecm=layer.ecm, alpha_fwd=layer.alpha_fwd,
                alpha_bkw=layer.alpha_bkw, eps=layer.eps)


def drifting_input(shape, scale=3.0):
    """Inputs whose mean and scale differ per feature, so the statistics matter."""
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    return torch.randn(shape) * torch.linspace(0.5, scale, c).view(view) + torch.linspace(-2, 2, c).view(view)


@pytest.mark.parametrize("shape", [(16, 3), (12, 4, 7), (10, 3, 5, 6)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ecm", ["ls", "ac", None])
def test_batch_axis_matches_reference_across_calls(shape, affine, ecm):
    layer = randomize(OnlineNorm(shape[1], alpha_fwd=0.9, alpha_bkw=0.8, affine=affine, ecm=ecm))
    state = dict(mu=layer.running_mean.clone(), var=layer.running_var.clone(),
                 u=torch.zeros(shape[1]), v=torch.zeros(shape[1]))
    for call in range(3):  # the stream, the statistics and the control state continue across calls
        x = drifting_input(shape).requires_grad_(True)
        out = layer(x)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
        want = ref.layer(batch_stream(x.detach()), batch_stream(grad_out), **state, **params(layer))
        torch.testing.assert_close(batch_stream(out.detach()).double(), want["out"], **TOL)
        torch.testing.assert_close(batch_stream(x.grad).double(), want["grad_x"], **TOL)
        if affine:
            torch.testing.assert_close(layer.weight.grad.double(), want["grad_weight"], **TOL)
            torch.testing.assert_close(layer.bias.grad.double(), want["grad_bias"], **TOL)
            layer.zero_grad()
        torch.testing.assert_close(layer.running_mean.double(), want["mu"], **TOL)
        torch.testing.assert_close(layer.running_var.double(), want["var"], **TOL)
        torch.testing.assert_close(layer.control[0].double(), want["u"], **TOL)
        torch.testing.assert_close(layer.control[1].double(), want["v"], **TOL)
        state = {k: want[k].float() for k in ("mu", "var", "u", "v")}


def test_batch_axis_paper_defaults_long_stream():
    """Default decays over a 300-sample stream, layer scaling on."""
    layer = randomize(OnlineNorm(5))
    state = dict(mu=layer.running_mean.clone(), var=layer.running_var.clone(), u=torch.zeros(5), v=torch.zeros(5))
    x = drifting_input((300, 5, 8)).requires_grad_(True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    want = ref.layer(x.detach(), grad_out, **state, **params(layer))
    torch.testing.assert_close(out.detach().double(), want["out"], **TOL)
    torch.testing.assert_close(x.grad.double(), want["grad_x"], **TOL)
    torch.testing.assert_close(layer.control.double(), torch.stack([want["u"], want["v"]]), **TOL)


@pytest.mark.parametrize("shape", [(3, 4, 20), (2, 3, 15, 9), (1, 1, 1), (2, 2, 1, 4)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("ecm", ["ls", "ac", None])
def test_time_axis_matches_reference_per_stream(shape, affine, ecm):
    layer = randomize(OnlineNorm(shape[1], alpha_fwd=0.9, alpha_bkw=0.8, affine=affine, ecm=ecm, stream_axis="time"))
    mu0, var0 = layer.running_mean.clone(), layer.running_var.clone()
    x = drifting_input(shape).requires_grad_(True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    zeros = torch.zeros(shape[1])
    wants = [
        ref.layer(xs, gs, mu=mu0, var=var0, u=zeros, v=zeros, **params(layer))
        for xs, gs in zip(time_streams(x.detach()), time_streams(grad_out))
    ]
    for b, want in enumerate(wants):
        torch.testing.assert_close(time_streams(out.detach())[b].double(), want["out"], **TOL)
        torch.testing.assert_close(time_streams(x.grad)[b].double(), want["grad_x"], **TOL)
    if affine:
        torch.testing.assert_close(layer.weight.grad.double(), sum(w["grad_weight"] for w in wants), **TOL)
        torch.testing.assert_close(layer.bias.grad.double(), sum(w["grad_bias"] for w in wants), **TOL)
    # Training moved the running statistics to the pooled end state of the streams.
    mu_end = torch.stack([w["mu"] for w in wants])
    var_end = torch.stack([w["var"] for w in wants])
    torch.testing.assert_close(layer.running_mean.double(), mu_end.mean(0), **TOL)
    torch.testing.assert_close(layer.running_var.double(), var_end.mean(0) + mu_end.var(0, correction=0), **TOL)
    assert not layer.control.any(), "the time axis keeps no control state between calls"
