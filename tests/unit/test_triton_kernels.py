"""The Triton kernels (interpreted on the CPU without a GPU) against torch and the reference loop."""

import pytest
import torch

from reference import online_norm as ref
from speechnorm.norm import OnlineNorm
from speechnorm.norm.kernels import backend_for, triton_available, use_backend

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton cannot run here")


@pytest.fixture
def ops():
    from speechnorm.norm.kernels import triton_ops

    return triton_ops


@pytest.mark.parametrize("width", [1, 7, 64, 1500])
def test_row_kernels_match_torch(ops, width):
    x = torch.randn(5, 3, width) * 2 + 4
    g = torch.randn_like(x)
    mean, var = ops.moments(x)
    torch.testing.assert_close(mean, x.mean(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var, x.var(-1, correction=0), atol=1e-5, rtol=1e-5)
    scale, shift = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(ops.affine(x, scale, shift), x * scale[..., None] + shift[..., None])
    sum_g, sum_gx = ops.grad_moments(g, x)
    torch.testing.assert_close(sum_g, g.sum(-1), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sum_gx, (g * x).sum(-1), atol=1e-4, rtol=1e-5)
    cg, cx, c0 = torch.randn(3, 5, 3)
    want = g * cg[..., None] + x * cx[..., None] + c0[..., None]
    torch.testing.assert_close(ops.grad_affine(g, x, cg, cx, c0, torch.float32), want, atol=1e-5, rtol=1e-5)


def test_row_kernels_read_half_precision_and_write_its_dtype(ops):
    x = (torch.randn(4, 6, 33) * 3).bfloat16()
    mean, var = ops.moments(x)
    assert mean.dtype == torch.float32
    torch.testing.assert_close(var, x.float().var(-1, correction=0), atol=1e-5, rtol=1e-5)
    out = ops.affine(x, torch.ones(4, 6) * 0.5, torch.zeros(4, 6))
    assert out.dtype == torch.bfloat16 and torch.equal(out, (x.float() * 0.5).bfloat16())


@pytest.mark.parametrize("length", [1, 2, 9])
@pytest.mark.parametrize("constant", [True, False])
def test_scan_kernel_matches_torch_scan(ops, length, constant):
    from speechnorm.norm.scan import linear_scan

    inputs = torch.randn(3, 5, length, dtype=torch.float64)
    initial = torch.randn(3, 5, dtype=torch.float64)
    decay = 0.9 if constant else torch.rand(3, 5, length, dtype=torch.float64) * 2 - 0.5
    torch.testing.assert_close(ops.scan(decay, inputs, initial), linear_scan(decay, inputs, initial))


def test_dispatch_and_override(monkeypatch):
    x = torch.randn(2, 3, 4)
    assert backend_for(x).name == "torch"  # CPU tensors use the torch path by default
    with use_backend("triton"):
        assert backend_for(x).name == "triton"
        assert backend_for(x.double()).name == "torch"  # the kernels take fp32/bf16/fp16
    with pytest.raises(ValueError, match="backend must be one of"):
        with use_backend("cuda"):
            pass
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not torch.cuda.is_available():
        with use_backend("triton"), pytest.raises(RuntimeError, match="Triton cannot run here"):
            backend_for(x)


CASES = [  # odd sizes: C = 1, T = 1, N = 1, F not a power of two
    ("batch", (1, 3, 5)), ("batch", (9, 1, 3, 3)), ("batch", (6, 4)),
    ("time", (2, 1, 7, 5)), ("time", (1, 3, 1, 6)), ("time", (2, 3, 6)), ("time", (3, 2, 5, 33)),
]


@pytest.mark.parametrize(("stream_axis", "shape"), CASES)
@pytest.mark.parametrize("ecm", ["ls", None])
def test_layer_on_triton_matches_reference(stream_axis, shape, ecm):
    layer = OnlineNorm(shape[1], alpha_fwd=0.9, alpha_bkw=0.8, ecm=ecm, stream_axis=stream_axis)
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    mu0, var0 = layer.running_mean.clone(), layer.running_var.clone()
    x = (torch.randn(shape) * 2 + 1).requires_grad_(True)
    with use_backend("triton"):
        assert backend_for(x).name == "triton"
        out = layer(x)
        grad_out = torch.randn_like(out)
        out.backward(grad_out)
    frames = x.detach() if len(shape) != 3 or stream_axis == "batch" else x.detach().unsqueeze(-1)
    grads = grad_out if len(shape) != 3 or stream_axis == "batch" else grad_out.unsqueeze(-1)
    if stream_axis == "batch":
        streams = [(frames.reshape(shape[0], shape[1], -1), grads.reshape(shape[0], shape[1], -1))]
        outs, x_grads = [out.detach().reshape(shape[0], shape[1], -1)], [x.grad.reshape(shape[0], shape[1], -1)]
    else:
        streams = [(frames[b].transpose(0, 1), grads[b].transpose(0, 1)) for b in range(shape[0])]
        o = out.detach() if out.dim() == 4 else out.detach().unsqueeze(-1)
        gx = x.grad if x.grad.dim() == 4 else x.grad.unsqueeze(-1)
        outs, x_grads = [o[b].transpose(0, 1) for b in range(shape[0])], [gx[b].transpose(0, 1) for b in range(shape[0])]
    zeros = torch.zeros(shape[1])
    for (xs, gs), o, gx in zip(streams, outs, x_grads):
        want = ref.layer(xs, gs, mu=mu0, var=var0, u=zeros, v=zeros, weight=layer.weight, bias=layer.bias, ecm=ecm,
                         alpha_fwd=0.9, alpha_bkw=0.8, eps=layer.eps)
        torch.testing.assert_close(o.double(), want["out"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gx.double(), want["grad_x"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stream_axis", ["batch", "time"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_on_triton_matches_float32(stream_axis, half):
    shape = (4, 3, 6, 9)
    x = torch.randn(shape) * 3 + 2
    g = torch.randn(shape)
    results = []
    for dtype in (torch.float32, half):
        layer = OnlineNorm(3, stream_axis=stream_axis)
        xi = x.to(dtype).detach().clone().requires_grad_(True)
        with use_backend("triton"):
            out = layer(xi)
            out.backward(g.to(dtype))
        assert out.dtype == dtype and xi.grad.dtype == dtype
        results.append((out.float(), xi.grad.float(), layer.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_works_under_autocast(backend):
    model = torch.nn.Sequential(torch.nn.Conv1d(4, 6, 1), OnlineNorm(6, stream_axis="time"))
    x = torch.randn(2, 4, 10)
    with use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        assert out.dtype == torch.bfloat16
        out.float().square().mean().backward()
    for param in model.parameters():
        assert param.grad is not None and param.grad.dtype == torch.float32 and torch.isfinite(param.grad).all()
