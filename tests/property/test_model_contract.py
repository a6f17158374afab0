"""Every registered model with every normalizer: offline == frame by frame, causal, and
indifferent to the order of the non-reference mics; non-causal normalizers refuse to stream."""

import copy

import pytest
import torch

from speechnorm.models import available, build
from speechnorm.norm import NotStreamableError
from speechnorm.norm import available as norm_kinds

TINY = {"tac_gru": dict(hidden=8, layers=1), "tac_crn": dict(channels=(4, 4), hidden=8)}
HOPS = 12


def tiny(name, norm, training):
    torch.manual_seed(1)
    model = build(name, norm=norm, **TINY[name]).train(training)
    with torch.no_grad():  # non-trivial running statistics where a normalizer has them
        for key, buf in model.named_buffers():
            if "running_" in key:
                buf.uniform_(0.5, 1.5)
    return model


def streamed(model, audio):
    state = model.initial_state(audio.shape[0], mics=audio.shape[1])
    outs = []
    with torch.no_grad():
        for t in range(audio.shape[-1] // model.hop):
            out, state = model.step(audio[..., t * model.hop : (t + 1) * model.hop], state)
            model.check_state(state, audio.shape[0], audio.shape[1])  # what the layers declare, every hop
            outs.append(out)
    return torch.cat(outs, dim=-1)


def offline(model, audio):
    with torch.no_grad():
        return copy.deepcopy(model)(audio)  # a copy: training-mode buffer updates stay out


def cases():
    for name in sorted(available()):
        for kind, spec in sorted(norm_kinds().items()):
            for training in (True, False):
                streams = spec.streaming == "always" or (spec.streaming == "eval only" and not training)
                yield pytest.param(name, kind, training, streams, id=f"{name}-{kind}-{'train' if training else 'eval'}")


@pytest.mark.parametrize(("name", "kind", "training", "streams"), list(cases()))
def test_offline_equals_streamed_for_any_mic_count(name, kind, training, streams):
    model = tiny(name, kind, training)
    if not streams:
        with pytest.raises(NotStreamableError, match=f"norm='{kind}' cannot stream"):
            model.initial_state(1, mics=2)
        return
    for mics in (1, 2, 4, 7):
        audio = torch.randn(2, mics, model.hop * HOPS) * 0.3
        whole = offline(model, audio)
        assert whole.shape == (2, model.hop * HOPS)
        torch.testing.assert_close(streamed(model, audio), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(available()))
@pytest.mark.parametrize("kind", [k for k, s in sorted(norm_kinds().items()) if s.streaming == "always"])
def test_causal_and_invariant_to_non_reference_mic_order(name, kind):
    model = tiny(name, kind, training=False)
    audio = torch.randn(1, 4, model.hop * HOPS) * 0.3
    whole = offline(model, audio)
    cut = 5 * model.hop
    changed = audio.clone()
    changed[..., cut:] = torch.randn_like(changed[..., cut:])
    torch.testing.assert_close(offline(model, changed)[..., :cut], whole[..., :cut])
    assert not torch.allclose(offline(model, changed)[..., cut:], whole[..., cut:])
    permuted = audio[:, [0, 3, 1, 2]]
    torch.testing.assert_close(offline(model, permuted), whole, atol=1e-5, rtol=1e-5)
    swapped_reference = audio[:, [1, 0, 2, 3]]
    assert not torch.allclose(offline(model, swapped_reference), whole, atol=1e-3)


@pytest.mark.parametrize("name", sorted(available()))
def test_small_size_budget_and_interface(name):
    from speechnorm.models import count_parameters

    model = build(name)
    assert count_parameters(model) <= 500_000
    assert model.sample_rate == 16_000 and model.hop == 160
    assert model.delay_samples == 160 and model.latency_samples == 320
    assert model.delay_ms == 10.0 and model.latency_ms == 20.0


@pytest.mark.parametrize("name", sorted(available()))
def test_bad_audio_is_refused(name):
    model = tiny(name, "online", training=False)
    for audio, message in [
        (torch.randn(1600), r"\(B, M, N\)"),
        (torch.randn(1, 0, 1600), r"\(B, M, N\)"),
        (torch.randn(1, 2, 1601), "multiple of the hop"),
        (torch.randn(1, 2, 0), "multiple of the hop"),
    ]:
        with pytest.raises(ValueError, match=message):
            model(audio)
    state = model.initial_state(1, mics=2)
    with pytest.raises(ValueError, match="one hop"):
        model.step(torch.randn(1, 2, 320), state)
    with pytest.raises(ValueError, match="state was made for"):
        model.step(torch.randn(1, 3, 160), state)
    with pytest.raises(ValueError, match="unknown model"):
        build("nope")
