"""The compiled CPU loop for one-component samples (``kernels.cpu_d1``) against the per-sample
reference loop, beside the general three-pass path it replaces for D = 1."""

import pytest
import torch

from reference import online_norm as ref
from speechnorm.norm import OnlineNorm
from speechnorm.norm.kernels import cpu_d1, use_backend

pytestmark = pytest.mark.skipif(not cpu_d1.available(), reason="numba is not installed")
TOL = dict(atol=1e-5, rtol=1e-5)


def randomized(channels, **kwargs):
    return ref.randomize(OnlineNorm(channels, alpha_fwd=0.9, alpha_bkw=0.8, stream_axis="time", **kwargs))


LAYOUTS = ("time_contiguous", "stream_first", "time_first", "strided")


def sequences(batch, channels, length, layout):
    """(B, C, T) with per-feature offsets and scales, in one of the memory layouts the kernels
    read — time contiguous (B, C, T); features contiguous as (B, T, C) (a pointwise layer's
    output) or (T, B, C) (a GRU's) — or in none of them (a strided slice, copied first)."""
    offsets = torch.linspace(-2, 2, channels).view(1, channels, 1)
    scales = torch.linspace(0.5, 3.0, channels).view(1, channels, 1)
    x = {
        "time_contiguous": lambda: torch.randn(batch, channels, length),
        "stream_first": lambda: torch.randn(batch, length, channels).transpose(1, 2),
        "time_first": lambda: torch.randn(length, batch, channels).permute(1, 2, 0),
        "strided": lambda: torch.randn(batch, 2 * channels, length + 3)[:, ::2, 3:],
    }[layout]()
    return x.mul_(scales).add_(offsets)  # in place: the layout stays


def spy(monkeypatch):
    calls = []
    original = cpu_d1.forward_d1

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(cpu_d1, "forward_d1", counted)
    return calls


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("ecm", ["ls", "ac", None])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_reference_loop(monkeypatch, backend, layout, ecm, affine):
    calls = spy(monkeypatch)
    layer = randomized(70, ecm=ecm, affine=affine)  # 70 features: more than one parallel block
    mu0, var0 = layer.running_mean.clone(), layer.running_var.clone()
    x = sequences(3, 70, 40, layout).requires_grad_(True)
    with use_backend(backend):
        out = layer(x)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
    assert len(calls) == (1 if backend == "auto" else 0), "auto takes the compiled loop on the CPU, torch the general path"
    zeros = torch.zeros(70)
    wants = [ref.layer(x.detach()[b].t().unsqueeze(-1), grad_out[b].t().unsqueeze(-1), mu=mu0, var=var0, u=zeros,
                       v=zeros, weight=layer.weight, bias=layer.bias, ecm=ecm, alpha_fwd=0.9, alpha_bkw=0.8,
                       eps=layer.eps) for b in range(3)]
    for b, want in enumerate(wants):
        torch.testing.assert_close(out.detach()[b].t().double(), want["out"][..., 0], **TOL)
        torch.testing.assert_close(x.grad[b].t().double(), want["grad_x"][..., 0], **TOL)
    if affine:
        torch.testing.assert_close(layer.weight.grad.double(), sum(w["grad_weight"] for w in wants), **TOL)
        torch.testing.assert_close(layer.bias.grad.double(), sum(w["grad_bias"] for w in wants), **TOL)
    mu_end = torch.stack([w["mu"] for w in wants])
    torch.testing.assert_close(layer.running_mean.double(), mu_end.mean(0), **TOL)
    if backend == "auto" and layout != "strided":
        assert out.stride() == x.stride() and x.grad.stride() == x.stride(), "outputs keep the input's memory layout"


def test_batch_axis_control_state_continues_across_calls():
    layer = OnlineNorm(6, alpha_fwd=0.9, alpha_bkw=0.8)  # the paper's setting: (N, C), the batch is the stream
    state = dict(mu=torch.zeros(6), var=torch.ones(6), u=torch.zeros(6), v=torch.zeros(6))
    for _ in range(3):
        x = (torch.randn(20, 6) * 2 + 1).requires_grad_(True)
        out = layer(x)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
        want = ref.layer(x.detach().unsqueeze(-1), grad_out.unsqueeze(-1), **state, weight=layer.weight, bias=layer.bias,
                         ecm="ls", alpha_fwd=0.9, alpha_bkw=0.8, eps=layer.eps)
        torch.testing.assert_close(x.grad.double(), want["grad_x"][..., 0], **TOL)
        torch.testing.assert_close(layer.control.double(), torch.stack([want["u"], want["v"]]), **TOL)
        state = {k: want[k].float() for k in ("mu", "var", "u", "v")}
        layer.zero_grad()


def test_long_stream_default_decays_float32():
    """2000 frames at the default decays: float32 data, statistics carried in float64."""
    layer = randomized(16)
    layer.alpha_fwd, layer.alpha_bkw = 0.999, 0.99
    mu0, var0 = layer.running_mean.clone(), layer.running_var.clone()
    x = sequences(1, 16, 2000, "time_contiguous").requires_grad_(True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    zeros = torch.zeros(16)
    want = ref.layer(x.detach()[0].t().unsqueeze(-1).double(), grad_out[0].t().unsqueeze(-1).double(), mu=mu0.double(),
                     var=var0.double(), u=zeros.double(), v=zeros.double(), weight=layer.weight.double(),
                     bias=layer.bias.double(), ecm="ls", alpha_fwd=0.999, alpha_bkw=0.99, eps=layer.eps)
    torch.testing.assert_close(out.detach()[0].t().double(), want["out"][..., 0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad[0].t().double(), want["grad_x"][..., 0], atol=2e-5, rtol=1e-5)


def saved_bytes(layer, x):
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(total)


def test_saves_only_the_input():
    """The backward recomputes the statistics from x: the general path saves about ten tensors of
    x's size for D = 1, the compiled loop saves x alone."""
    x = torch.randn(4, 32, 100, requires_grad=True)
    layer = randomized(32)
    fused = saved_bytes(layer, x)
    with use_backend("torch"):
        general = saved_bytes(layer, x)
    size = x.numel() * x.element_size()
    assert fused <= size + 4096, (fused, size)
    assert general >= 5 * size, (general, size)


def test_non_finite_input_refused_and_nothing_moves():
    layer = randomized(8)
    before = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(2, 8, 30)
    x[1, 3, 17] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        layer(x)
    x[1, 3, 17] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        layer(x)
    torch.testing.assert_close(layer.running_mean, before[0], rtol=0, atol=0)
    torch.testing.assert_close(layer.running_var, before[1], rtol=0, atol=0)


def test_bfloat16_input_close_to_float32():
    """bf16 in, bf16 out; computed in float32 inside, so it is the float32 result rounded."""
    layer = randomized(12)
    twin = randomized(12)
    twin.load_state_dict(layer.state_dict())
    x = sequences(2, 12, 50, "time_first").bfloat16()
    low = x.clone().requires_grad_(True)
    full = x.float().requires_grad_(True)
    grad_out = torch.randn(2, 12, 50)
    out_low, out_full = layer(low), twin(full)
    out_low.backward(grad_out.bfloat16())
    out_full.backward(grad_out.bfloat16().float())
    assert out_low.dtype == torch.bfloat16 and low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out_low.float(), out_full.detach().bfloat16().float(), atol=0, rtol=0)
    torch.testing.assert_close(low.grad.float(), full.grad.bfloat16().float(), atol=0, rtol=0)
