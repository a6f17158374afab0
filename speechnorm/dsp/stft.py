"""One STFT for training, streaming and export: a fixed DFT basis applied as a matmul.

Framing is causal: frame t holds the n_fft samples that end with hop t, so each new hop of
input completes one frame (the state is the previous ``n_fft - hop`` samples per channel).
Synthesis overlap-adds with the same window; frames t-1 and t complete output samples
``[t·hop - (n_fft - hop), t·hop)``. The output is therefore the input delayed by
``delay = n_fft - hop`` samples, in ``forward`` and in ``step`` alike. The default square-root
periodic Hann window at 50 % overlap satisfies Σ w² = 1, so analysis then synthesis reproduces
the (delayed) input exactly, up to float rounding.

Spectra are real tensors with a trailing (real, imag) split: ``(..., 2, T, F)`` for sequences,
``(..., 2, F)`` for frames; F = n_fft // 2 + 1. No complex dtype, so the graph exports to ONNX.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..state import StateSpec


def sqrt_hann(n_fft: int) -> Tensor:
    """Square root of the periodic Hann window: Σ_k w²[n + k·n_fft/2] = 1."""
    n = torch.arange(n_fft, dtype=torch.float64)
    return torch.sin(math.pi * n / n_fft)


class STFT(nn.Module):
    """Causal analysis/synthesis pair with a streaming state.

    Args:
        n_fft: window length in samples (320 = 20 ms at 16 kHz).
        hop: hop in samples (160 = 10 ms); ``n_fft`` must be 2 × ``hop`` (50 % overlap).
    """

    def __init__(self, n_fft: int = 320, hop: int = 160):
        super().__init__()
        if n_fft != 2 * hop or hop < 1:
            raise ValueError(f"this STFT needs 50 % overlap (n_fft == 2 * hop), got n_fft={n_fft}, hop={hop}")
        self.n_fft, self.hop = n_fft, hop
        self.bins = n_fft // 2 + 1
        window = sqrt_hann(n_fft)
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(self.bins, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(n, k) / n_fft  # (n_fft, F)
        # analysis: frame (.., n_fft) @ (n_fft, 2F) -> (re, im), the window folded in
        analysis = torch.cat((torch.cos(angle), -torch.sin(angle)), dim=1) * window[:, None]
        # synthesis: the inverse real DFT of (re, im), weights 1, 2, ..., 2, 1 over the bins
        weight = torch.full((self.bins,), 2.0, dtype=torch.float64)
        weight[0] = 1.0
        weight[-1] = 1.0
        synthesis = torch.cat((torch.cos(angle).T * weight[:, None], -torch.sin(angle).T * weight[:, None]), dim=0)
        synthesis = synthesis / n_fft * window[None, :]  # (2F, n_fft)
        self.register_buffer("analysis_basis", analysis.float(), persistent=False)
        self.register_buffer("synthesis_basis", synthesis.float(), persistent=False)

    @property
    def delay(self) -> int:
        """Samples by which synthesis(analysis(x)) lags x."""
        return self.n_fft - self.hop

    # ------------------------------------------------------------------ offline
    def analysis(self, audio: Tensor) -> Tensor:
        """(..., N) with N a multiple of hop -> spectrum (..., 2, T, F), T = N / hop."""
        frames = torch.nn.functional.pad(audio, (self.delay, 0)).unfold(-1, self.n_fft, self.hop)  # (..., T, n_fft)
        return self._to_spectrum(frames @ self.analysis_basis)

    def synthesis(self, spectrum: Tensor) -> Tensor:
        """Spectrum (..., 2, T, F) -> (..., T·hop) samples, delayed by ``delay``."""
        frames = self._from_spectrum(spectrum) @ self.synthesis_basis  # (..., T, n_fft)
        heads, tails = frames[..., : self.hop], frames[..., self.hop :]
        # output hop t = head of frame t + tail of frame t-1 (none before frame 0)
        tails = torch.nn.functional.pad(tails[..., :-1, :], (0, 0, 1, 0))
        return (heads + tails).flatten(-2)

    # ------------------------------------------------------------------ streaming
    def state_spec(self) -> dict[str, StateSpec]:
        """The analysis buffer (per analysed channel) and the synthesis tail (per output channel),
        zeros; a model decides how many streams of each it runs (e.g. B·M buffers, B tails)."""
        return {"buffer": StateSpec(torch.zeros(self.delay), "analysis: the last n_fft - hop input samples"),
                "tail": StateSpec(torch.zeros(self.n_fft - self.hop), "synthesis: the overlap-add tail of the output")}

    def analysis_step(self, hop_audio: Tensor, buffer: Tensor) -> tuple[Tensor, Tensor]:
        """One hop (..., hop) -> one frame's spectrum (..., 2, F), and the new buffer."""
        frame = torch.cat((buffer, hop_audio), dim=-1)
        spectrum = frame @ self.analysis_basis
        return self._split(spectrum), frame[..., self.hop :]

    def synthesis_step(self, spectrum: Tensor, tail: Tensor) -> tuple[Tensor, Tensor]:
        """One frame's spectrum (B, 2, F) -> one output hop (B, hop), and the new tail."""
        frame = torch.cat((spectrum[..., 0, :], spectrum[..., 1, :]), dim=-1) @ self.synthesis_basis
        return frame[..., : self.hop] + tail, frame[..., self.hop :]

    # ------------------------------------------------------------------ layout helpers
    def _split(self, stacked: Tensor) -> Tensor:  # (..., 2F) -> (..., 2, F)
        return stacked.unflatten(-1, (2, self.bins))

    def _to_spectrum(self, stacked: Tensor) -> Tensor:  # (..., T, 2F) -> (..., 2, T, F)
        return self._split(stacked).transpose(-3, -2)

    def _from_spectrum(self, spectrum: Tensor) -> Tensor:  # (..., 2, T, F) -> (..., T, 2F)
        return spectrum.transpose(-3, -2).flatten(-2)

    def extra_repr(self) -> str:
        return f"n_fft={self.n_fft}, hop={self.hop}, bins={self.bins}, delay={self.delay}"
