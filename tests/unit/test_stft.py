"""The causal STFT: exact against torch.fft, perfect reconstruction, streaming == offline."""

import pytest
import torch

from speechnorm.dsp import STFT, sqrt_hann


@pytest.mark.parametrize(("n_fft", "hop"), [(320, 160), (512, 256), (64, 32)])
def test_analysis_matches_torch_rfft(n_fft, hop):
    stft = STFT(n_fft, hop)
    audio = torch.randn(2, 3, hop * 12, dtype=torch.float64)
    spec = stft.double().analysis(audio)
    frames = torch.nn.functional.pad(audio, (n_fft - hop, 0)).unfold(-1, n_fft, hop) * sqrt_hann(n_fft)
    want = torch.fft.rfft(frames, dim=-1)
    torch.testing.assert_close(spec[:, :, 0], want.real, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(spec[:, :, 1], want.imag, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("n_fft", "hop"), [(320, 160), (64, 32)])
def test_perfect_reconstruction_after_the_delay(n_fft, hop):
    stft = STFT(n_fft, hop)
    audio = torch.randn(2, hop * 20)
    out = stft.synthesis(stft.analysis(audio))
    assert out.shape == audio.shape and stft.delay == n_fft - hop
    torch.testing.assert_close(out[:, stft.delay :], audio[:, : -stft.delay], atol=1e-5, rtol=0)
    assert out[:, : stft.delay].abs().max() < 1e-5


def test_streaming_equals_offline():
    stft = STFT()
    audio = torch.randn(2, 4, 160 * 15)
    spec = stft.analysis(audio)
    modified = spec[:, 0] * torch.rand_like(spec[:, 0])  # any spectral processing
    offline = stft.synthesis(modified)
    buffer, tail = torch.zeros(2, 4, stft.delay), torch.zeros(2, stft.n_fft - stft.hop)
    assert {k: v.shape(1) for k, v in stft.state_spec().items()} == {"buffer": (1, stft.delay), "tail": (1, stft.delay)}
    frames, outs = [], []
    for t in range(15):
        frame, buffer = stft.analysis_step(audio[..., t * 160 : (t + 1) * 160], buffer)
        frames.append(frame)
        out, tail = stft.synthesis_step(modified[:, :, t], tail)
        outs.append(out)
    torch.testing.assert_close(torch.stack(frames, dim=3), spec, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(outs, dim=-1), offline, atol=1e-5, rtol=1e-5)


def test_window_overlap_adds_to_one_and_bad_overlap_is_refused():
    w = sqrt_hann(320)
    torch.testing.assert_close(w[:160] ** 2 + w[160:] ** 2, torch.ones(160, dtype=torch.float64))
    with pytest.raises(ValueError, match="50 % overlap"):
        STFT(400, 160)
