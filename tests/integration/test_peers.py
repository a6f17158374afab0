"""The peer systems of scripts/evaluate_peers.py run, keep the length, and are aligned in time."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import evaluate_peers as peers  # noqa: E402


def speech_in_noise(mics=3, seconds=2.0):
    """Real speech (not a periodic tone, whose correlation peaks repeat) in light white noise."""
    import soundfile as sf

    from speechnorm.assets import ASSETS

    clean, _ = sf.read(ASSETS / "example_clean.flac", dtype="float32", start=16000, frames=int(16000 * seconds))
    noisy = clean[None] + 0.01 * np.random.default_rng(0).standard_normal((mics, clean.size))
    return noisy.astype(np.float32), clean


@pytest.mark.parametrize("system", ["noisereduce_peer", "mvdr_peer"])
def test_classical_peers_keep_length_and_stay_aligned(system):
    noisy, clean = speech_in_noise()
    out = getattr(peers, system)(noisy)
    assert out.shape == clean.shape and np.isfinite(out).all()
    lag = np.argmax(np.correlate(out, clean, "full")) - (clean.size - 1)
    assert abs(lag) <= 2, lag


@pytest.mark.skipif(importlib.util.find_spec("pyrnnoise") is None, reason="pyrnnoise is not installed (make peers)")
def test_rnnoise_is_aligned_after_its_delay():
    noisy, clean = speech_in_noise(mics=1)
    out = peers.RNNoise()(noisy)
    assert out.shape == clean.shape
    lag = np.argmax(np.correlate(out, clean, "full")) - (clean.size - 1)
    assert abs(lag) <= 2, lag
