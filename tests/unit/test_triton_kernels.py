"""The Triton kernels (interpreted on the CPU without a GPU) against the per-sample reference loop:
every output of a training call — forward output, ∂L/∂x, ∂L/∂γ, ∂L/∂β, the buffers — for the
layouts the models pass (contiguous, strided, channels_last), D = 1 and D > 1, T = 1 and long T,
fp32 and half precision. ``tests/gpu`` runs the same checks on a CUDA device at larger sizes."""

import pytest
import torch

from reference import online_norm as ref
from speechnorm.norm import OnlineNorm
from speechnorm.norm.kernels import backend_for, d1_kernels, triton_available, use_backend

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton cannot run here")
TOL = dict(atol=2e-5, rtol=2e-5)


@pytest.fixture
def ops():
    from speechnorm.norm.kernels import triton_ops

    return triton_ops


def run_call(layer, x, grad_out, backend="triton"):
    x = x.detach().requires_grad_(True)
    with use_backend(backend):
        out = layer(x)
        out.backward(grad_out)
    return x, out


CASES = [  # (stream axis, shape, memory layout): C = 1, T = 1, N = 1, odd D, D over one chunk
    ("batch", (1, 3, 5), "contiguous"), ("batch", (9, 1, 3, 3), "contiguous"), ("batch", (6, 4), "contiguous"),
    ("batch", (5, 4, 3, 3), "channels_last"), ("batch", (7, 5, 6), "strided"),
    ("time", (2, 1, 7, 5), "contiguous"), ("time", (1, 3, 1, 6), "contiguous"), ("time", (2, 3, 6), "contiguous"),
    ("time", (3, 2, 5, 33), "contiguous"), ("time", (2, 3, 4, 21), "features_inner"),
    ("time", (2, 3, 4, 21), "time_first"), ("time", (2, 3, 4, 21), "strided"), ("time", (2, 3, 2, 300), "contiguous"),
    ("time", (2, 5, 9), "features_inner"), ("time", (2, 5, 9), "time_first"), ("time", (2, 5, 9), "strided"),
    ("time", (1, 2, 1), "contiguous"), ("time", (2, 3, 200), "time_first"),
]


@pytest.mark.parametrize(("stream_axis", "shape", "kind"), CASES)
@pytest.mark.parametrize("ecm", ["ls", "ac", None])
def test_training_call_matches_reference(stream_axis, shape, kind, ecm):
    layer = ref.randomize(OnlineNorm(shape[1], alpha_fwd=0.9, alpha_bkw=0.8, ecm=ecm, stream_axis=stream_axis))
    before = layer.running_mean.clone(), layer.running_var.clone(), layer.control.clone()
    x = ref.laid_out(shape, kind)
    grad_out = torch.randn(shape)
    with use_backend("triton"):
        assert backend_for(x).name == "triton"
    x, out = run_call(layer, x, grad_out)
    want = ref.expected_call(layer, x, grad_out, *before[:2], before[2] if stream_axis == "batch" else None)
    ref.assert_call_matches(layer, x, out, want, **TOL)
    assert out.dtype == x.dtype and x.grad.dtype == x.dtype


def test_without_affine_and_second_call_continues(ops):
    layer = OnlineNorm(4, alpha_fwd=0.9, alpha_bkw=0.8, affine=False)  # batch axis: state across calls
    for _ in range(2):
        before = layer.running_mean.clone(), layer.running_var.clone(), layer.control.clone()
        x, g = torch.randn(6, 4, 3) + 1, torch.randn(6, 4, 3)
        x, out = run_call(layer, x, g)
        ref.assert_call_matches(layer, x, out, ref.expected_call(layer, x, g, *before), **TOL)


def test_one_component_samples_take_the_fused_kernel(monkeypatch, ops):
    """D = 1 is one kernel each way on the Triton path (no general-path passes)."""
    calls = []
    for name in ("forward_d1", "backward_d1", "forward", "backward"):
        original = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _n=name, _o=original, **k: (calls.append(_n), _o(*a, **k))[1])
    x = torch.randn(2, 3, 5)
    with use_backend("triton"):
        assert d1_kernels(x) is ops
    run_call(OnlineNorm(3, stream_axis="time"), x, torch.randn(2, 3, 5))
    run_call(OnlineNorm(3, stream_axis="time"), torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4))
    assert calls == ["forward_d1", "backward_d1", "forward", "backward"]


def test_outputs_keep_the_input_layout():
    for shape, kind in (((2, 3, 4, 21), "features_inner"), ((2, 5, 9), "time_first"), ((5, 4, 3, 3), "channels_last")):
        axis = "batch" if kind == "channels_last" else "time"
        x, out = run_call(OnlineNorm(shape[1], stream_axis=axis), ref.laid_out(shape, kind), torch.randn(shape))
        assert out.stride() == x.stride() and x.grad.stride() == x.stride(), kind


@pytest.mark.parametrize("width", [21, 257, 1500])
def test_moments_are_exact_for_offset_features(ops, width):
    """One read of x, chunks combined by Chan's formula: as exact as two passes, also when the
    mean dwarfs the spread (E[x²] − E[x]² would lose every digit in float32)."""
    x = (torch.randn(1, 3, 4, width, dtype=torch.float64) * 0.01 + 1000.0)
    out, mu_end, var_end, mean, var = ops.forward(x.float(), None, None, torch.zeros(3), torch.ones(3), 0.9, 1e-5, False)
    want_var, want_mean = torch.var_mean(x.float().double(), dim=-1, correction=0)
    torch.testing.assert_close(mean.double(), want_mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(var.double(), want_var, atol=0, rtol=1e-3)


def test_offset_features_keep_their_digits(ops):
    """Features riding on an offset 1000× their spread: the moments are shifted and the gradient
    sums centred (Σ g·(x − mean), not Σ g·x − mean Σ g), so what is left is float32 statistics'
    rounding of μ (about 3e-5 at 500), well under a part in a thousand of every result."""
    layer = ref.randomize(OnlineNorm(3, alpha_fwd=0.9, alpha_bkw=0.8, stream_axis="time"))
    layer.running_mean.fill_(500.0)
    before = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(2, 3, 6, 17) * 0.5 + 500.0
    g = torch.randn_like(x)
    x, out = run_call(layer, x, g)
    ref.assert_call_matches(layer, x, out, ref.expected_call(layer, x, g, *before), atol=1e-3, rtol=2e-3)


@pytest.mark.parametrize("stream_axis", ["batch", "time"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("width", [1, 9])
def test_half_precision_matches_float32(stream_axis, half, width):
    """bf16/fp16 in, the same dtype out, within the half format's rounding of the fp32 result
    (statistics in fp32 either way)."""
    shape = (4, 3, 6, width) if width > 1 else (4, 3, 6)
    x, g = torch.randn(shape) * 3 + 2, torch.randn(shape)
    results = []
    for dtype in (torch.float32, half):
        layer = OnlineNorm(3, stream_axis=stream_axis)
        xi, out = run_call(layer, x.to(dtype), g.to(dtype))
        assert out.dtype == dtype and xi.grad.dtype == dtype
        results.append((out.float(), xi.grad.float(), layer.weight.grad, layer.running_mean))
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


def test_layer_scaling_refuses_more_features_than_one_program_holds(ops):
    with pytest.raises(ValueError, match="at most"):
        ops.lane_blocks(ops.MAX_LANES + 1, True)
    assert ops.lane_blocks(ops.MAX_LANES + 1, False)[1] > 1  # without layer scaling, features split


CHUNKED = [("time", (2, 5, 23), "time_first"), ("time", (3, 4, 20), "strided"), ("time", (1, 6, 9), "contiguous"),
           ("time", (2, 5, 23, 7), "contiguous"), ("time", (2, 4, 20, 9), "features_inner"),
           ("time", (2, 3, 17, 5), "strided"), ("batch", (23, 4, 5), "contiguous"), ("batch", (19, 6), "contiguous")]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
@pytest.mark.parametrize(("axis", "shape", "kind"), CHUNKED)
@pytest.mark.parametrize("ecm", ["ls", None])
def test_time_parallel_chunks_match_reference(monkeypatch, ops, chunk, axis, shape, kind, ecm):
    """Each (stream, chunk of samples) is its own program, from the μ, σ², u, v the chunk starts
    with (summarized per chunk, then walked across chunks), for D = 1 and D > 1 and both stream
    axes: any chunking gives the loop's result."""
    monkeypatch.setattr(ops, "CHUNK", chunk)
    length = shape[2] if axis == "time" else shape[0]
    assert ops.time_chunks(length, 1) == (min(chunk, length), -(-length // min(chunk, length)))
    layer = ref.randomize(OnlineNorm(shape[1], alpha_fwd=0.8, alpha_bkw=0.7, ecm=ecm, stream_axis=axis))
    before = layer.running_mean.clone(), layer.running_var.clone(), layer.control.clone()
    x, grad_out = ref.laid_out(shape, kind), torch.randn(shape)
    x, out = run_call(layer, x, grad_out)
    want = ref.expected_call(layer, x, grad_out, *before[:2], before[2] if axis == "batch" else None)
    ref.assert_call_matches(layer, x, out, want, **TOL)


def test_time_parallel_chunks_keep_offset_features_exact(monkeypatch, ops):
    """Chunk summaries are centred on each chunk's first sample: features 500 away from the
    statistics they start from lose no digits across chunk boundaries."""
    monkeypatch.setattr(ops, "CHUNK", 4)
    layer = OnlineNorm(3, alpha_fwd=0.9, alpha_bkw=0.8, stream_axis="time")
    before = layer.running_mean.clone(), layer.running_var.clone()
    x = torch.randn(2, 3, 30) * 0.5 + 500.0
    grad_out = torch.randn_like(x)
    x, out = run_call(layer, x, grad_out)
    ref.assert_call_matches(layer, x, out, ref.expected_call(layer, x, grad_out, *before), atol=1e-3, rtol=2e-3)


def test_time_chunks_fill_the_device(ops):
    assert ops.time_chunks(10, 8) == (10, 1)  # short streams: one chunk, no summary passes
    chunk, chunks = ops.time_chunks(200, 8)  # the TAC-GRU's GRU norms in training: 7x the programs
    assert chunks == 7 and chunk == 32
    chunk, chunks = ops.time_chunks(2000, 16)
    assert chunks * 16 >= 256 and chunk * chunks >= 2000
