"""What the Triton path moves through memory and where it would make the host wait, traced in
Triton's interpreter (``speechnorm.norm.kernels.traffic``): the budgets of the CUDA training path,
asserted without a GPU."""

import pytest
import torch

from speechnorm.models import build
from speechnorm.norm import OnlineNorm
from speechnorm.norm.finite import finite_check, raise_if_nonfinite
from speechnorm.norm.kernels import triton_available, use_backend

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton cannot run here")


@pytest.fixture
def traffic():
    from speechnorm.norm.kernels import traffic

    return traffic


def gru_like(batch, channels, length, dtype):
    """(B, C, T) as a GRU's output lies in memory, (T, B, C): what the TAC-GRU's norms receive."""
    return torch.randn(length, batch, channels).permute(1, 2, 0).to(dtype)


def test_the_tracer_counts_a_known_kernel(traffic, monkeypatch):
    """The D = 1 forward in one time chunk reads x once and writes out once, plus a few (P, C)
    state vectors."""
    from speechnorm.norm.kernels import triton_ops

    monkeypatch.setattr(triton_ops, "CHUNK", 1000)
    x = gru_like(4, 64, 50, torch.float32)
    layer = OnlineNorm(64, stream_axis="time")
    with use_backend("triton"), traffic.trace() as t:
        layer(x)
    state = 4 * (4 * 64 * 4) + 4 * (2 * 64 * 4)  # μ0, σ²0 in and μ, σ² out, (P, C) fp32; γ, β in each of P programs
    assert t.launches == 1
    assert t.kernel_bytes == 2 * x.nbytes + state


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_one_component_budget(traffic, dtype):
    """D = 1 (every TAC-GRU norm), time-parallel at the recipe's T = 200 (7 chunks of 32 frames):
    forward ≤ 16 and backward ≤ 24 bytes per element in bf16 (the general path moved ~348 and
    ~547); saved for backward: x alone."""
    t = traffic.layer_traffic(OnlineNorm(64, stream_axis="time"), gru_like(2, 64, 200, dtype))
    per = t.per_element()
    scale = t.x_bytes / t.elements / 2  # the budgets are for 2-byte elements
    assert per["forward"] <= 16 * scale and per["backward"] <= 24 * scale, per
    assert t.forward.launches == 3 and t.backward.launches == 5  # summary, walk, main; twice backward
    assert per["saved_over_x"] <= 1.0 + 1e-9, per


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("width", [21, 81, 257])
def test_several_components_within_1_5x_batchnorm(traffic, monkeypatch, dtype, width):
    """D > 1 with the statistics kernels in time chunks of 32 (as at the recipe's T = 200), and in one."""
    from speechnorm.norm.kernels import triton_ops

    monkeypatch.setattr(triton_ops, "CHUNK", 32)
    t = traffic.layer_traffic(OnlineNorm(8, stream_axis="time"), torch.randn(2, 8, 64, width).to(dtype))
    assert t.forward.launches == 5 and t.backward.launches == 7  # the chunks' summary and walk passes ran
    monkeypatch.setattr(triton_ops, "CHUNK", None)
    short = traffic.layer_traffic(OnlineNorm(8, stream_axis="time"), torch.randn(2, 8, 20, width).to(dtype))
    assert short.forward.launches == 3 and short.backward.launches == 3
    for t in (t, short):
        check_rows_budget(traffic, t)


def check_rows_budget(traffic, t):
    per, batchnorm = t.per_element(), traffic.batchnorm_bytes(t.x_bytes // t.elements)
    assert per["forward"] <= 1.5 * batchnorm["forward"], (per, batchnorm)
    assert per["backward"] <= 1.5 * batchnorm["backward"], (per, batchnorm)
    assert per["saved_over_x"] <= 2.0, per


@pytest.mark.parametrize("name", ["tac_gru", "tac_crn"])
def test_a_training_step_never_waits_for_the_device(traffic, name):
    """A whole forward and backward of a recipe model on the Triton path: no host sync at all when
    the finite check is deferred (as on CUDA); with the immediate check, the counter sees them."""
    torch.manual_seed(0)
    model = build(name, norm="online", size="small")
    x = torch.randn(2, 3, 960)
    with use_backend("triton"), finite_check("deferred"), traffic.trace() as t:
        model(x).square().mean().backward()
    assert t.launches > 0 and t.syncs == []
    raise_if_nonfinite()
    with use_backend("triton"), finite_check("sync"), traffic.trace() as t:
        model(x).square().mean().backward()
    assert "_local_scalar_dense" in t.syncs


def test_deferred_check_raises_at_the_next_check():
    layer = OnlineNorm(3, stream_axis="time")
    x = torch.randn(2, 3, 5)
    x[1, 2, 3] = float("nan")
    with use_backend("triton"), finite_check("deferred"):
        layer(x)  # no error yet, and no sync
        with pytest.raises(ValueError, match="NaN or inf.*deferred check"):
            raise_if_nonfinite()
        raise_if_nonfinite()  # cleared
    with use_backend("triton"), finite_check("sync"), pytest.raises(ValueError, match="NaN or inf"):
        layer(x)
    with pytest.raises(ValueError, match="mode must be one of"):
        with finite_check("later"):
            pass
