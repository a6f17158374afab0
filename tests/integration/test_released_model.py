"""Every model released in models/: its card tells the truth, it streams, and it enhances."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechnorm.models.checkpoint import load_model
from speechnorm.models import count_parameters

RELEASED = sorted(p.parent for p in (Path(__file__).resolve().parents[2] / "models").glob("*/card.json"))


def unit_speaker(model, seed: int = 0):
    """A personalized model's embedding for checks that need one (non-negative, unit, like the
    encoder's), None for a plain model."""
    if not model.speaker_dim:
        return None
    raw = torch.rand(model.speaker_dim, generator=torch.Generator().manual_seed(seed))
    return raw / raw.norm()


def test_a_model_is_released():
    assert RELEASED, "models/ holds no released model"


@pytest.mark.parametrize("folder", RELEASED, ids=lambda p: p.name)
def test_card_matches_the_weights_and_the_weights_stream(folder):
    card = json.loads((folder / "card.json").read_text())
    assert (folder / "model.ckpt").stat().st_size < 5_000_000 and (folder / "README.md").exists()
    model, _ = load_model(folder)
    assert card["parameters"] == count_parameters(model)
    assert card["sample_rate"] == model.sample_rate and card["latency_ms"] == model.latency_ms
    audio = torch.randn(1, 3, 160 * 30) * 0.1
    speaker = unit_speaker(model)
    with torch.inference_mode():
        whole = model(audio, speaker=speaker)
        state = model.initial_state(1, mics=3, speaker=speaker)
        hops = []
        for t in range(30):
            out, state = model.step(audio[..., t * 160 : (t + 1) * 160], state)
            hops.append(out)
    torch.testing.assert_close(torch.cat(hops, -1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("folder", RELEASED, ids=lambda p: p.name)
def test_released_model_enhances_fresh_speech_in_noise(folder):
    from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as si_sdr

    from speechnorm.data import synthetic
    from speechnorm.data.rooms import MixSpec, array_geometry, simulate

    if synthetic.shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make system-deps)")
    model, _ = load_model(folder)
    rng = np.random.default_rng(123)
    exe = synthetic.require_espeak()
    speaker = None
    if model.personalized:  # enrolled from another sentence of the same voice
        from speechnorm.speaker import embed

        import importlib.util

        if importlib.util.find_spec("resemblyzer") is None:  # its weights only: the package is never imported
            pytest.skip("the resemblyzer wheel (the voice encoder's weights) is not installed")
        enrollment = synthetic.speak("we will meet at the corner of the old market square after lunch", "en-us", 160, 50, exe)
        speaker = torch.from_numpy(embed(enrollment.numpy(), 16000)[0])
    gains = []
    for i, text in enumerate(["the station opens at seven every morning", "please call me tomorrow about the letter"]):
        speech = synthetic.speak(text, "en-us", 160, 50, exe)[: 16000 * 2]
        speech = torch.nn.functional.pad(speech, (0, 32000 - speech.numel()))
        noise = synthetic.coloured_noise(rng, 32000, 1.0)
        noisy, target = simulate(rng, speech, [noise], array_geometry(rng, "circular", 4), MixSpec(snr_db=(0.0, 0.0)))
        with torch.inference_mode():
            delay = model.delay_samples  # output sample n + delay estimates target sample n
            enhanced, aligned = model(noisy[None], speaker=speaker)[0, delay:], target[: target.numel() - delay]
        gains.append((si_sdr(enhanced, aligned) - si_sdr(noisy[0, : aligned.numel()], aligned)).item())
    assert min(gains) > 1.0, gains


@pytest.mark.parametrize("folder", RELEASED, ids=lambda p: p.name)
def test_released_onnx_graphs_compute_what_the_checkpoint_loads_as(folder):
    """The shipped ONNX graphs were exported when the model was released; the checkpoint must still
    load as that function (e.g. after a normalizer default changed: ``norm.pin_defaults``)."""
    pytest.importorskip("onnxruntime")
    from speechnorm.stream import OnnxModel

    onnx = OnnxModel(folder / "model.onnx")
    model, _ = load_model(folder)
    audio = (np.random.default_rng(0).standard_normal((3, 160 * 40)) * 0.1).astype(np.float32)
    speaker = unit_speaker(model)
    with torch.inference_mode():
        expected = model(torch.from_numpy(audio)[None], speaker=speaker)[0].numpy()
    speaker = None if speaker is None else speaker.numpy()
    np.testing.assert_allclose(onnx.offline(audio, speaker=speaker), expected, atol=2e-4, rtol=0)
    stream = onnx.open(3, speaker=speaker)
    stepped = np.concatenate([stream.step(audio[:, t * 160 : (t + 1) * 160]).copy() for t in range(40)], -1)
    np.testing.assert_allclose(stepped, expected, atol=2e-4, rtol=0)


def test_enroll_without_a_model_uses_a_released_personalized_model():
    """``speechnorm enhance --enroll`` with no ``--model`` loads the personalized default: it is
    released here, and it is personalized (it takes the 256-d embedding ``speechnorm enroll`` makes)."""
    from speechnorm.enhance import DEFAULT_PERSONALIZED_MODEL
    from speechnorm.speaker import EMBEDDING

    assert DEFAULT_PERSONALIZED_MODEL in RELEASED
    model, _ = load_model(DEFAULT_PERSONALIZED_MODEL)
    assert model.personalized and model.speaker_dim == EMBEDDING
    card = json.loads((DEFAULT_PERSONALIZED_MODEL / "card.json").read_text())
    assert card["onnx"]["speaker"]
