"""On a CUDA device, OnlineNorm computes what it computes on the CPU (skipped without CUDA)."""

import copy

import pytest
import torch

from speechnorm.norm import OnlineNorm

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(("stream_axis", "shape"), [("batch", (16, 8, 6, 6)), ("time", (3, 8, 50, 33)), ("time", (4, 8, 70))])
@pytest.mark.parametrize("ecm", ["ls", "ac", None])
def test_cuda_matches_cpu(stream_axis, shape, ecm):
    cpu = OnlineNorm(shape[1], ecm=ecm, stream_axis=stream_axis)
    gpu = copy.deepcopy(cpu).cuda()
    for _ in range(2):
        x = torch.randn(shape) * 2 + 1
        g = torch.randn(shape)
        xs = [x.clone().requires_grad_(True), x.cuda().requires_grad_(True)]
        for module, xi, gi in zip((cpu, gpu), xs, (g, g.cuda())):
            module(xi).backward(gi)
        torch.testing.assert_close(xs[1].grad.cpu(), xs[0].grad, atol=1e-4, rtol=1e-4)
        for (name, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items()):
            torch.testing.assert_close(b.cpu(), a, atol=1e-5, rtol=1e-5, msg=name)


def test_cuda_uses_the_triton_kernels():
    from speechnorm.norm.kernels import backend_for

    assert backend_for(torch.randn(2, 3, device="cuda")).name == "triton"


@pytest.mark.parametrize("stream_axis", ["batch", "time"])
def test_cuda_autocast_bf16(stream_axis):
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1), OnlineNorm(8, stream_axis=stream_axis)).cuda()
    x = torch.randn(3, 4, 20, 33, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("shape", [(8, 256, 28, 28), (4, 64, 300, 257), (16, 128, 2000)])
def test_cuda_kernels_match_torch_path_at_scale(shape):
    from speechnorm.norm.kernels import use_backend

    axis = "batch" if len(shape) == 4 and shape[2] == shape[3] else "time"
    x = torch.randn(shape, device="cuda") * 2 + 1
    g = torch.randn(shape, device="cuda")
    results = []
    for backend in ("torch", "triton"):
        layer = OnlineNorm(shape[1], stream_axis=axis).cuda()
        xi = x.clone().requires_grad_(True)
        with use_backend(backend):
            layer(xi).backward(g)
        results.append(xi.grad)
    torch.testing.assert_close(results[1], results[0], atol=1e-4, rtol=1e-4)
