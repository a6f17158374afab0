"""On a CUDA device (skipped without one; all of it runs with ``pytest -m gpu``): the Triton kernels
against the float64 per-sample reference — forward output, ∂L/∂x, ∂L/∂γ, ∂L/∂β and the buffers —
for fp32, and bf16/fp16 against the fp32 result, on the layouts the models pass (contiguous, a
GRU's time-first output, features innermost, strided slices, channels_last), D = 1, 21, 81, 257,
1500, T = 1 and long T; the CPU and GPU computing the same function; a whole TAC-GRU training
step captured in a CUDA graph and replayed, equal to eager steps."""

import copy

import pytest
import torch

from reference import online_norm as ref
from speechnorm.norm import OnlineNorm
from speechnorm.norm.kernels import backend_for, use_backend

pytestmark = pytest.mark.gpu
FP32 = dict(atol=2e-4, rtol=2e-4)  # fp32 statistics against float64
HALF = {torch.bfloat16: dict(atol=4e-2, rtol=4e-2), torch.float16: dict(atol=1e-2, rtol=1e-2)}

CASES = [  # (stream axis, shape, layout)
    ("time", (4, 64, 1), "contiguous"), ("time", (4, 64, 2000), "time_first"), ("time", (3, 48, 300), "features_inner"),
    ("time", (3, 48, 300), "contiguous"), ("time", (3, 48, 100), "strided"),
    ("time", (2, 16, 1, 21), "contiguous"), ("time", (3, 32, 200, 21), "contiguous"),
    ("time", (3, 32, 100, 81), "features_inner"), ("time", (2, 16, 100, 257), "contiguous"),
    ("time", (2, 16, 50, 257), "strided"), ("time", (2, 8, 20, 1500), "contiguous"),
    ("batch", (64, 32), "contiguous"), ("batch", (16, 24, 6, 6), "channels_last"), ("batch", (16, 24, 9), "strided"),
]


def call(layer, x, grad_out):
    x = x.detach().requires_grad_(True)
    out = layer(x)
    out.backward(grad_out)
    return x, out


def randomized(shape, axis, ecm):
    return ref.randomize(OnlineNorm(shape[1], alpha_fwd=0.99, alpha_bkw=0.9, ecm=ecm, stream_axis=axis)).cuda()


def test_cuda_uses_the_triton_kernels():
    assert backend_for(torch.randn(2, 3, device="cuda")).name == "triton"


@pytest.mark.parametrize(("axis", "shape", "kind"), CASES)
@pytest.mark.parametrize("ecm", ["ls", "ac", None])
def test_fp32_matches_reference(axis, shape, kind, ecm):
    torch.manual_seed(0)
    layer = randomized(shape, axis, ecm)
    before = layer.running_mean.clone(), layer.running_var.clone(), layer.control.clone()
    x = ref.laid_out(shape, kind, device="cuda")
    if kind != "contiguous":
        assert not x.is_contiguous()
    grad_out = torch.randn(shape, device="cuda")
    x, out = call(layer, x, grad_out)
    want = ref.expected_call(layer, x, grad_out, *before[:2], before[2] if axis == "batch" else None)
    ref.assert_call_matches(layer, x, out, want, **FP32)


@pytest.mark.parametrize(("axis", "shape", "kind"), CASES)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_matches_fp32(axis, shape, kind, half):
    """bf16/fp16 in and out, statistics in fp32: within the half format's rounding of the fp32 run."""
    torch.manual_seed(0)
    x = ref.laid_out(shape, kind, device="cuda")
    grad_out = torch.randn(shape, device="cuda")
    results = []
    for dtype in (torch.float32, half):
        layer = randomized(shape, axis, "ls")
        torch.manual_seed(1)
        layer = ref.randomize(layer)
        xi, out = call(layer, x.to(dtype), grad_out.to(dtype))
        assert out.dtype == dtype and xi.grad.dtype == dtype
        results.append({"out": out.float(), "grad_x": xi.grad.float(), "grad_weight": layer.weight.grad,
                        "grad_bias": layer.bias.grad, "running_mean": layer.running_mean})
    for name in results[0]:
        scale = results[0][name].abs().max().clamp_min(1.0)
        torch.testing.assert_close(results[1][name] / scale, results[0][name] / scale, msg=name, **HALF[half])


@pytest.mark.parametrize(("axis", "shape"), [("batch", (16, 8, 6, 6)), ("time", (3, 8, 50, 33)), ("time", (4, 8, 70))])
@pytest.mark.parametrize("ecm", ["ls", "ac", None])
def test_cuda_matches_cpu(axis, shape, ecm):
    cpu = OnlineNorm(shape[1], ecm=ecm, stream_axis=axis)
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


@pytest.mark.parametrize("axis", ["batch", "time"])
def test_cuda_autocast_bf16(axis):
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1), OnlineNorm(8, stream_axis=axis)).cuda()
    x = torch.randn(3, 4, 20, 33, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("shape", [(8, 256, 28, 28), (4, 64, 300, 257), (16, 128, 2000)])
def test_triton_matches_torch_path_at_scale(shape):
    axis = "batch" if len(shape) == 4 and shape[2] == shape[3] else "time"
    x = torch.randn(shape, device="cuda") * 2 + 1
    g = torch.randn(shape, device="cuda")
    results = []
    for backend in ("torch", "triton"):
        layer = OnlineNorm(shape[1], stream_axis=axis).cuda()
        xi = x.clone().requires_grad_(True)
        with use_backend(backend):
            out = layer(xi)
            out.backward(g)
        results.append((out, xi.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=2e-4)


def test_nonfinite_input_is_refused_without_a_sync():
    from speechnorm.norm.finite import finite_check, raise_if_nonfinite

    layer = OnlineNorm(8, stream_axis="time").cuda()
    x = torch.randn(2, 8, 30, device="cuda")
    x[1, 3, 7] = float("nan")
    layer(x)  # deferred on CUDA: no error, no wait
    with pytest.raises(ValueError, match="NaN or inf"):
        raise_if_nonfinite()
    with finite_check("sync"), pytest.raises(ValueError, match="NaN or inf"):
        layer(x)


def test_training_step_captures_in_a_cuda_graph():
    """The TAC-GRU's whole training step (forward, loss, backward, Adam) captured once and replayed
    gives the parameters of the same steps run eagerly: nothing in it syncs with the host."""
    from speechnorm.models import build

    torch.manual_seed(0)
    eager = build("tac_gru", norm="online", size="small").cuda().train()
    graphed = copy.deepcopy(eager)
    audio = torch.randn(4, 4, 16000, device="cuda") * 0.1
    target = audio[:, 0].clone()

    def make_step(model):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)

        def step():
            optimizer.zero_grad(set_to_none=False)
            estimate = model(audio)
            length = min(estimate.shape[-1], target.shape[-1])
            loss = (estimate[..., :length] - target[..., :length]).square().mean()
            loss.backward()
            optimizer.step()
        return step

    eager_step, graphed_step = make_step(eager), make_step(graphed)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            graphed_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graphed_step()
    for _ in range(3):
        eager_step()
    for _ in range(4):
        graph.replay()
        eager_step()
    torch.cuda.synchronize()
    for (name, a), (_, b) in zip(eager.state_dict().items(), graphed.state_dict().items()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3, msg=name)
