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
