"""What every enhancement model shares: audio in, audio out, offline or one hop at a time.

    enhanced = model(audio)                       # audio (B, M, N) float32, N a multiple of hop
    state = model.initial_state(batch, mics=M)
    out_hop, state = model.step(hop_audio, state) # hop_audio (B, M, hop) -> (B, hop)

The models here are spectral maskers: the causal STFT (``speechnorm.dsp``) of every mic,
per-mic features, a network that sees all mics and returns a complex ratio mask, the mask
applied to the reference mic (mic 0), and overlap-add synthesis. The output lags the input by
``delay_samples`` (the STFT's n_fft - hop) in ``forward`` and ``step`` alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..dsp import STFT
from ..norm import NotStreamableError
from .layers import State

SAMPLE_RATE = 16_000
EPS = 1e-8


def spectral_features(spectrum: Tensor) -> Tensor:
    """(B, M, 2, *rest) spectra -> (B, M, 3, *rest) features per mic and bin.

    The log power of each mic, and the cosine and sine of its phase relative to the reference
    mic (mic 0): magnitude for what is there, relative phase for where it comes from. Relative
    quantities keep the model independent of the array's geometry and absolute phase.
    """
    re, im = spectrum[:, :, 0], spectrum[:, :, 1]
    power = re.square() + im.square()
    ref_re, ref_im = re[:, :1], im[:, :1]
    cross_re = re * ref_re + im * ref_im  # X_m · conj(X_0)
    cross_im = im * ref_re - re * ref_im
    scale = torch.rsqrt(power * power[:, :1] + EPS)
    return torch.stack((torch.log(power + EPS), cross_re * scale, cross_im * scale), dim=2)


def apply_mask(mask: Tensor, spectrum: Tensor) -> Tensor:
    """Complex multiplication of (B, 2, *rest) mask and spectrum."""
    m_re, m_im = mask[:, 0], mask[:, 1]
    x_re, x_im = spectrum[:, 0], spectrum[:, 1]
    return torch.stack((m_re * x_re - m_im * x_im, m_re * x_im + m_im * x_re), dim=1)


def bounded_mask(raw: Tensor) -> Tensor:
    """Complex ratio mask with each component in (-2, 2)."""
    return 2.0 * torch.tanh(0.5 * raw)


class SpectralEnhancer(nn.Module):
    """Base class: the STFT around a mask network. Subclasses implement ``mask`` (a sequence),
    ``mask_initial_state`` and ``mask_step`` (one frame)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, norm: str, n_fft: int = 320, hop: int = 160):
        super().__init__()
        self.norm = norm
        self.stft = STFT(n_fft, hop)

    @property
    def hop(self) -> int:
        return self.stft.hop

    @property
    def delay_samples(self) -> int:
        """The output lags the input by this many samples (forward and step alike)."""
        return self.stft.delay

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency: a hop of buffering plus the delay (= the window, 20 ms by default)."""
        return self.stft.delay + self.stft.hop

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_samples / self.sample_rate

    @property
    def delay_ms(self) -> float:
        return 1000.0 * self.delay_samples / self.sample_rate

    def _check_audio(self, audio: Tensor, *, hop_only: bool = False) -> None:
        name = type(self).__name__
        if not isinstance(audio, Tensor) or audio.dim() != 3 or audio.shape[1] < 1:
            shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
            raise ValueError(f"{name} expects audio of shape (B, M, N) with M >= 1 mics, got {shape}; "
                             "add batch and mic axes, e.g. x[None, None] for one mono signal")
        if hop_only and audio.shape[-1] != self.hop:
            raise ValueError(f"{name}.step expects one hop of {self.hop} samples per mic, got {audio.shape[-1]}")
        if audio.shape[-1] == 0 or audio.shape[-1] % self.hop:
            raise ValueError(f"{name} needs a positive multiple of the hop ({self.hop} samples), got N = {audio.shape[-1]}; "
                             "pad the end with zeros")
        if not audio.is_floating_point():
            raise ValueError(f"{name} expects floating-point audio, got {audio.dtype}")

    def forward(self, audio: Tensor) -> Tensor:
        """(B, M, N) -> (B, N), the enhanced reference mic delayed by ``delay_samples``."""
        self._check_audio(audio)
        spectrum = self.stft.analysis(audio)  # (B, M, 2, T, F)
        return self.stft.synthesis(apply_mask(self.mask(spectrum), spectrum[:, 0]))

    def initial_state(self, batch: int, mics: int = 1, device=None, dtype=None) -> State:
        """The state before the first hop: STFT buffers, then the network's state."""
        try:
            network = self.mask_initial_state(batch, mics, device=device, dtype=dtype)
        except NotStreamableError as err:
            raise NotStreamableError(
                f"{type(self).__name__} built with norm={self.norm!r} cannot stream ({err}); "
                "build it with a causal normalizer such as 'online', or call .eval() for 'batch'"
            ) from None
        return (*self.stft.initial_state((batch, mics), device=device, dtype=dtype), *network)

    def step(self, hop_audio: Tensor, state: State) -> tuple[Tensor, State]:
        """(B, M, hop) -> ((B, hop), new state). Pure: the module is not changed."""
        self._check_audio(hop_audio, hop_only=True)
        buffer, tail, *network = state
        if buffer.shape[:2] != hop_audio.shape[:2]:
            raise ValueError(f"state was made for (B, M) = {tuple(buffer.shape[:2])}, got audio for {tuple(hop_audio.shape[:2])}")
        frame, buffer = self.stft.analysis_step(hop_audio, buffer)  # (B, M, 2, F)
        mask, network = self.mask_step(frame, tuple(network))
        out, tail = self.stft.synthesis_step(apply_mask(mask, frame[:, 0]), tail)
        return out, (buffer, tail, *network)

    # subclasses ------------------------------------------------------------
    def mask(self, spectrum: Tensor) -> Tensor:
        """(B, M, 2, T, F) -> complex mask (B, 2, T, F)."""
        raise NotImplementedError

    def mask_initial_state(self, batch: int, mics: int, device=None, dtype=None) -> State:
        raise NotImplementedError

    def mask_step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """(B, M, 2, F) -> ((B, 2, F), new state)."""
        raise NotImplementedError
