"""The one switch: make_norm and available(), and the relatives' own math."""

import math

import pytest
import torch

from speechnorm.norm import OnlineNorm, SequenceNorm, available, make_norm, register_norm

REQUIRED = {"online", "batch", "layer", "group", "instance", "rms", "streaming_lp", "none"}


def test_required_kinds_are_registered():
    assert REQUIRED <= set(available())
    for name, spec in available().items():
        assert spec.name == name and spec.summary and spec.streaming in ("always", "eval only", "never")


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown normalizer kind 'bn'.*batch.*online"):
        make_norm("bn", 4)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_norm("online", streaming="always", summary="again")(lambda c: None)


def test_online_kind_is_the_time_axis_layer():
    norm = make_norm("online", 4, alpha_fwd=0.99)
    assert isinstance(norm, OnlineNorm) and norm.stream_axis == "time" and norm.alpha_fwd == 0.99
    with pytest.raises(ValueError, match="batch axis"):
        make_norm("online", 4, stream_axis="batch")


def test_online_defaults_speech_time_constant_and_drop_in_keeps_the_papers():
    assert make_norm("online", 4).alpha_fwd == 0.99  # 1 s at 100 frames/s: the ablation's choice
    assert make_norm("online(ecm='ac')", 4).alpha_fwd == 0.99
    assert OnlineNorm(4, stream_axis="time").alpha_fwd == 0.99
    assert OnlineNorm(4).alpha_fwd == 0.999  # the BatchNorm drop-in keeps the paper's default


@pytest.mark.parametrize("spec, version, expected", [
    ("online", None, "online(alpha_fwd=0.999)"),  # written before versions were recorded
    ("online", 1, "online(alpha_fwd=0.999)"),
    ("online", 2, "online"),
    ("online(ecm='ac')", 1, "online(ecm='ac', alpha_fwd=0.999)"),
    ("online(alpha_fwd=0.9)", 1, "online(alpha_fwd=0.9)"),  # set explicitly: never changed
    ("batch", 1, "batch"),
    ("online_shared", 1, "online_shared"),
])
def test_pin_defaults_spells_out_what_an_old_checkpoint_meant(spec, version, expected):
    from speechnorm.norm import pin_defaults

    assert pin_defaults(spec, version) == expected


def test_pinned_spec_rebuilds_the_old_function():
    from speechnorm.norm import pin_defaults

    torch.manual_seed(0)
    x = torch.randn(2, 4, 50) * 3 + 1
    old = OnlineNorm(4, alpha_fwd=0.999, stream_axis="time")  # what "online" built under version 1
    pinned = make_norm(pin_defaults("online", 1), 4)
    pinned.load_state_dict(old.state_dict())
    torch.testing.assert_close(pinned(x), old(x), rtol=0, atol=0)


def test_a_checkpoint_from_newer_defaults_is_refused():
    from speechnorm.norm import DEFAULTS_VERSION, pin_defaults

    with pytest.raises(ValueError, match="newer than this speechnorm"):
        pin_defaults("online", DEFAULTS_VERSION + 1)


@pytest.mark.parametrize("kind", sorted(REQUIRED))
@pytest.mark.parametrize("shape", [(2, 4, 10), (2, 4, 10, 3)])
def test_every_kind_keeps_shape_and_rejects_wrong_features(kind, shape):
    norm = make_norm(kind, 4)
    assert isinstance(norm, SequenceNorm)
    x = torch.randn(shape, requires_grad=True)
    out = norm(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="built for 4 features"):
        norm(torch.randn(2, 5, 10))


def test_layer_norm_is_per_frame_over_channels_and_bins():
    x = torch.randn(2, 4, 6, 5)
    want = torch.nn.functional.layer_norm(x.permute(0, 2, 1, 3), (4, 5)).permute(0, 2, 1, 3)
    torch.testing.assert_close(make_norm("layer", 4)(x), want, atol=1e-5, rtol=1e-5)


def test_group_norm_matches_torch_per_frame():
    x = torch.randn(3, 8, 7, 5)
    per_frame = x.permute(0, 2, 1, 3).reshape(21, 8, 5)
    want = torch.nn.functional.group_norm(per_frame, 4).reshape(3, 7, 8, 5).permute(0, 2, 1, 3)
    torch.testing.assert_close(make_norm("group", 8, num_groups=4)(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        make_norm("group", 6, num_groups=4)


def test_instance_norm_matches_torch():
    x = torch.randn(2, 3, 9, 4)
    torch.testing.assert_close(make_norm("instance", 3)(x), torch.nn.functional.instance_norm(x), atol=1e-5, rtol=1e-5)


def test_rms_norm_matches_closed_form():
    x = torch.randn(2, 3, 9)
    want = x / torch.sqrt(x.square().mean(dim=1, keepdim=True) + 1e-5)
    torch.testing.assert_close(make_norm("rms", 3)(x), want)


def test_batch_norm_matches_torch_in_both_modes():
    x = torch.randn(4, 3, 12, 5)
    norm, twin = make_norm("batch", 3), torch.nn.BatchNorm2d(3)
    torch.testing.assert_close(norm(x), twin(x))
    torch.testing.assert_close(norm.eval()(x), twin.eval()(x))


def test_streaming_lp_matches_loop():
    """Against a per-frame loop of the documented recurrence, p = 1 and p = 2."""
    x = torch.randn(2, 3, 30, 4) * 2 + 1
    for p in (1.0, 2.0):
        norm = make_norm("streaming_lp", 3, p=p, alpha=0.9, affine=False)
        mu = norm.running_mean.expand(2, 3)
        moment = norm.running_moment.expand(2, 3)
        frames = []
        for t in range(30):
            x_t = x[:, :, t]
            frames.append((x_t - mu[..., None]) / (moment[..., None] ** (1 / p) + 1e-5))
            moment = 0.9 * moment + 0.1 * ((x_t - mu[..., None]).abs() ** p).mean(-1)
            mu = 0.9 * mu + 0.1 * x_t.mean(-1)
        torch.testing.assert_close(norm(x), torch.stack(frames, 2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(norm.running_moment, moment.mean(0))


def test_streaming_lp_starts_calibrated_for_unit_gaussians():
    assert math.isclose(make_norm("streaming_lp", 1).running_moment.item(), math.sqrt(2 / math.pi), rel_tol=1e-6)
    assert math.isclose(make_norm("streaming_lp", 1, p=2).running_moment.item(), 1.0, rel_tol=1e-6)


def test_normprop_normalizes_relu_of_standard_normal_without_statistics():
    x = torch.relu(torch.randn(4, 3, 2000))
    y = make_norm("normprop", 3)(x)
    assert abs(y.mean().item()) < 0.02 and abs(y.std().item() - 1.0) < 0.02
    before = make_norm("normprop", 3)(x[:, :, :5])
    torch.testing.assert_close(before, y[:, :, :5])  # no state, no data statistics


@pytest.mark.parametrize("kind", sorted(REQUIRED))
def test_empty_input_is_refused(kind):
    with pytest.raises(ValueError, match="empty input"):
        make_norm(kind, 3)(torch.randn(2, 3, 0))
