"""OnlineNorm beyond the reference comparison: the control property, eval mode, exact ECM
gradients, state round trips, streaming, precision and bad input."""

import copy
import io

import pytest
import torch

from reference import online_norm as ref
from speechnorm.norm import NotStreamableError, OnlineNorm
from speechnorm.norm.autograd import ActivationClamp, LayerScaling


def test_control_process_makes_gradient_orthogonal_to_1_and_y():
    """Over a long stationary stream, the running means of mean_D(x') and mean_D(x' y) go to ~0
    with the control process; autograd through the EMA (each batch its own graph, as in
    practice) leaves most of the gradient's mean and y-component in."""
    channels, comps, batch, batches, alpha_fwd = 3, 16, 16, 150, 0.99
    stream = torch.randn(batches, batch, channels, comps) * 2.0 + 3.0

    def loss_grad(y):  # a gradient with a mean and a y-component, as real losses produce
        return 0.5 + 0.7 * y + 0.3 * torch.randn_like(y)

    def summarize(grads, ys):
        grads, ys = torch.cat(grads)[len(grads) * batch // 2 :], torch.cat(ys)[len(ys) * batch // 2 :]
        return grads.mean(dim=-1).mean().abs().item(), (grads * ys).mean(dim=-1).mean().abs().item()

    layer = OnlineNorm(channels, alpha_fwd=alpha_fwd, affine=False, ecm=None)
    ctrl_grads, ctrl_ys = [], []
    for x in stream:
        x = x.clone().requires_grad_(True)
        y = layer(x)
        y.backward(loss_grad(y.detach()))
        ctrl_grads.append(x.grad)
        ctrl_ys.append(y.detach())

    mu, var = torch.zeros(channels, dtype=torch.float64), torch.ones(channels, dtype=torch.float64)
    ema_grads, ema_ys = [], []
    for x in stream:
        x = x.double().requires_grad_(True)
        y, _, mu_end, var_end = ref.forward_loop(x, mu, var, alpha_fwd, 1e-5)
        y.backward(loss_grad(y.detach()))
        ema_grads.append(x.grad)
        ema_ys.append(y.detach())
        mu, var = mu_end.detach(), var_end.detach()

    ctrl_mean, ctrl_proj = summarize(ctrl_grads, ctrl_ys)
    ema_mean, ema_proj = summarize(ema_grads, ema_ys)
    assert ema_mean > 0.1 and ema_proj > 0.1, (ema_mean, ema_proj)
    assert ctrl_mean < 0.02 * ema_mean, (ctrl_mean, ema_mean)
    assert ctrl_proj < 0.05 * ema_proj, (ctrl_proj, ema_proj)


def test_batch_axis_eval_uses_frozen_statistics():
    layer = OnlineNorm(4, ecm=None)
    for _ in range(3):
        layer(torch.randn(8, 4, 5) * 3 + 1)
    layer.eval()
    frozen = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(6, 4, 5)
    out = layer(x)
    want = (x - layer.running_mean[:, None]) / torch.sqrt(layer.running_var[:, None] + layer.eps)
    torch.testing.assert_close(out, want * layer.weight[:, None] + layer.bias[:, None])
    for key, value in layer.state_dict().items():
        assert torch.equal(value, frozen[key]), f"eval mode changed {key}"


def test_time_axis_train_and_eval_compute_the_same_function():
    layer = OnlineNorm(3, stream_axis="time")
    x = torch.randn(2, 3, 40, 6) * 2 + 1
    evaluated = copy.deepcopy(layer).eval()
    torch.testing.assert_close(layer.train()(x), evaluated(x))
    assert torch.equal(evaluated.running_mean, torch.zeros(3)), "eval must not move the running statistics"
    assert not torch.equal(layer.running_mean, torch.zeros(3)), "training moves the running statistics"


@pytest.mark.parametrize("dims", [(1, 3), (1, 2, 3), (-1,)])
def test_layer_scaling_gradcheck(dims):
    h = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: LayerScaling.apply(t, dims, 1e-5), (h,))


def test_activation_clamp_gradcheck_and_mask():
    h = torch.randn(3, 4, 6, dtype=torch.float64) * 6
    h = torch.where((h.abs() - 5).abs() < 1e-3, h + 0.01, h).requires_grad_(True)  # away from the kinks
    assert torch.autograd.gradcheck(lambda t: ActivationClamp.apply(t, 5.0), (h,))
    ActivationClamp.apply(h, 5.0).sum().backward()
    assert torch.equal(h.grad, (h.detach().abs() <= 5).double())


@pytest.mark.parametrize("stream_axis", ["batch", "time"])
def test_state_dict_round_trip_continues_the_stream(stream_axis):
    shape = (6, 3, 5) if stream_axis == "batch" else (2, 3, 10)
    layer = OnlineNorm(3, stream_axis=stream_axis)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(shape) * 2 + 1).square().mean().backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    restored = OnlineNorm(3, stream_axis=stream_axis)
    restored.load_state_dict(torch.load(buffer))
    x = torch.randn(shape)
    results = []
    for module in (layer, restored):
        xi = x.clone().requires_grad_(True)
        module(xi).square().mean().backward()
        results.append((module(x.clone()).detach(), xi.grad, module.control.clone(), module.running_var.clone()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 3, 25), (3, 4, 18, 7)])
@pytest.mark.parametrize("ecm", ["ls", "ac", None])
def test_step_scan_equals_sequence_forward(shape, ecm):
    layer = OnlineNorm(shape[1], ecm=ecm, stream_axis="time")
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.weight.uniform_(0.5, 2.0)
    x = torch.randn(shape) * 3 + 2
    state = layer.initial_state(shape[0])
    frames = []
    for t in range(shape[2]):
        y_t, state = layer.step(x[:, :, t], state)
        frames.append(y_t)
    torch.testing.assert_close(torch.stack(frames, dim=2), layer.eval()(x), atol=1e-5, rtol=1e-5)


def test_step_leaves_module_untouched():
    layer = OnlineNorm(3, stream_axis="time")
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    state = layer.initial_state(2)
    layer.step(torch.randn(2, 3, 4) + 5, state)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_batch_axis_is_not_streamable():
    layer = OnlineNorm(3)
    with pytest.raises(NotStreamableError, match="cannot run frame by frame"):
        layer.initial_state(1)


def test_bfloat16_input_uses_float32_statistics():
    layer = OnlineNorm(4, stream_axis="time")
    x = torch.randn(2, 4, 50, 8) * 100 + 1000  # a large offset that bf16 statistics would get wrong
    x16 = x.bfloat16().requires_grad_(True)
    out = layer(x16)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert x16.grad.dtype == torch.bfloat16
    want = OnlineNorm(4, stream_axis="time")(x16.detach().float())
    torch.testing.assert_close(out.float(), want, atol=0.05, rtol=0.02)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(alpha_fwd=1.0), "alpha_fwd"),
        (dict(alpha_bkw=0.0), "alpha_bkw"),
        (dict(eps=0.0), "eps"),
        (dict(ecm="bn"), "ecm"),
        (dict(stream_axis="freq"), "stream_axis"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OnlineNorm(3, **kwargs)


@pytest.mark.parametrize("stream_axis", ["batch", "time"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    ("make_input", "message"),
    [
        (lambda: torch.randn(5), "expects"),  # wrong rank
        (lambda: torch.randn(2, 4, 6), "built for 3 features"),
        (lambda: torch.randint(0, 3, (2, 3, 6)), "floating-point"),
        (lambda: torch.randn(2, 3, 6).index_put_((torch.tensor(1), torch.tensor(2), torch.tensor(3)), torch.tensor(float("nan"))), "NaN or inf"),
        (lambda: torch.randn(2, 3, 6).index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(0)), torch.tensor(float("inf"))), "NaN or inf"),
    ],
)
def test_bad_input_is_refused(stream_axis, training, make_input, message):
    layer = OnlineNorm(3, stream_axis=stream_axis).train(training)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        layer(make_input())
    for key, value in layer.state_dict().items():
        assert torch.equal(value, before[key]), f"a refused input changed {key}"


def test_time_axis_rejects_image_rank_and_bad_frames():
    layer = OnlineNorm(3, stream_axis="time")
    with pytest.raises(ValueError, match=r"\(B, C, T\)"):
        layer(torch.randn(2, 3, 4, 5, 6))
    state = layer.initial_state(2)
    with pytest.raises(ValueError, match="frame"):
        layer.step(torch.randn(2, 3, 4, 5), state)
    with pytest.raises(ValueError, match="NaN or inf"):
        layer.step(torch.full((2, 3), float("nan")), state)


def test_reset_running_stats_restarts_the_stream():
    layer = OnlineNorm(3)
    x = (torch.randn(8, 3, 4) * 2 + 1).requires_grad_(True)
    layer(x).sum().backward()
    assert layer.control.abs().sum() > 0 and not torch.equal(layer.running_mean, torch.zeros(3))
    layer.reset_running_stats()
    assert torch.equal(layer.running_mean, torch.zeros(3)) and torch.equal(layer.running_var, torch.ones(3))
    assert torch.equal(layer.control, torch.zeros(2, 3))


def test_shared_statistics_setting_is_the_batch_axis_over_a_time_major_stream():
    """``online_shared``: the batch's sequences form one stream of T·B samples, frame by frame;
    training computes the paper's layer on it (against the reference loop), and eval is frame-local
    with the frozen statistics, so it streams exactly."""
    from reference import online_norm as ref
    from speechnorm.norm import make_norm

    norm = ref.randomize(make_norm("online_shared", 5))
    mu0, var0, control0 = norm.running_mean.clone(), norm.running_var.clone(), norm.control.clone()
    for shape in ((3, 5, 7, 4), (2, 5, 6)):
        x = (torch.randn(shape) * 2 + 1).requires_grad_(True)
        grad = torch.randn(shape)
        out = norm(x)
        out.backward(grad)

        def stream(t):
            frames = t if t.dim() == 4 else t.unsqueeze(-1)
            return frames.permute(2, 0, 1, 3).reshape(-1, 5, frames.shape[-1])

        want = ref.layer(stream(x.detach()), stream(grad), mu=mu0, var=var0, u=control0[0], v=control0[1],
                         weight=norm.weight, bias=norm.bias, ecm="ls", alpha_fwd=norm.alpha_fwd,
                         alpha_bkw=norm.alpha_bkw, eps=norm.eps)
        torch.testing.assert_close(stream(out.detach()).double(), want["out"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stream(x.grad).double(), want["grad_x"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(norm.running_mean.double(), want["mu"], atol=1e-6, rtol=1e-6)
        mu0, var0 = norm.running_mean.clone(), norm.running_var.clone()
        control0 = norm.control.clone()
        norm.weight.grad = norm.bias.grad = None
    assert not norm.streamable
    norm.eval()
    x = torch.randn(2, 5, 6, 4)
    frames = torch.stack([norm.step(x[:, :, t], {})[0] for t in range(6)], dim=2)
    torch.testing.assert_close(frames, norm(x))
