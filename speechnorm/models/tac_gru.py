"""TAC-GRU: the recurrent family.

    per-mic features (log power, cos/sin of phase relative to mic 0), all bins of a frame
      -> shared encoder (1×1 conv over time, normalizer, PReLU), every mic its own stream
      -> TAC across mics (any M, any geometry) -> the reference mic's stream
      -> [personalized: FiLM by the target speaker's embedding]
      -> GRU stack, each layer GRU -> normalizer, residual
      -> complex ratio mask for every bin, applied to the reference mic's spectrum

Every layer is causal, so the whole model streams one 10 ms hop at a time. A frame's bins enter
the encoder together: the GRU then sees the whole spectrum each hop, which is what a recurrent
enhancer needs to track noise over time.
"""

from __future__ import annotations

from torch import Tensor

from ..norm import make_norm
from .base import SpectralEnhancer, bounded_mask, spectral_features
from .layers import EMPTY, GRU, TAC, Activation, Pointwise, Residual, Sequential, SpeakerFiLM, State
from .registry import register_model


@register_model(
    "tac_gru",
    sizes={"small": dict(hidden=128, layers=2), "base": dict(hidden=256, layers=3)},
    summary="per-mic encoder -> TAC -> GRU stack -> complex mask at mic 0",
)
class TacGRU(SpectralEnhancer):
    """Recurrent multi-channel enhancer. audio (B, M, N) -> (B, N).

    Args:
        norm: any registered normalizer kind (``speechnorm norms``), used after the encoder and in
            every GRU layer.
        hidden: channels of the encoder, TAC and GRUs.
        layers: GRU layers.
        n_fft, hop: the STFT (20 ms / 10 ms at 16 kHz by default).
        speaker_dim: > 0 makes the model personalized: the reference stream entering the GRUs is
            modulated by the target speaker's embedding of this size (``SpeakerFiLM``; 256 for
            ``speechnorm enroll``), and the model then needs one.
    """

    def __init__(self, norm: str = "online", hidden: int = 128, layers: int = 2, n_fft: int = 320, hop: int = 160,
                 speaker_dim: int = 0):
        super().__init__(norm, n_fft, hop)
        bins = self.stft.bins
        self.encoder = Sequential(Pointwise(3 * bins, hidden), make_norm(norm, hidden), Activation(hidden))
        self.tac = TAC(hidden, hidden)
        if speaker_dim < 0:
            raise ValueError(f"speaker_dim must be 0 (not personalized) or positive, got {speaker_dim}")
        self.speaker_dim = int(speaker_dim)
        if speaker_dim:
            self.speaker = SpeakerFiLM(speaker_dim, hidden)
        self.rnn = Sequential(*[Residual(Sequential(GRU(hidden, hidden), make_norm(norm, hidden))) for _ in range(layers)])
        self.head = Pointwise(hidden, 2 * bins)

    def mask(self, spectrum: Tensor, speaker: Tensor | None = None) -> Tensor:
        batch, mics, _, frames, bins = spectrum.shape
        features = spectral_features(spectrum).transpose(-1, -2).reshape(batch * mics, 3 * bins, frames)
        encoded = self.encoder(features).unflatten(0, (batch, mics))  # (B, M, H, T)
        reference = self.tac(encoded)[:, 0]  # (B, H, T)
        if self.speaker_dim:
            reference = self.speaker.condition(reference, speaker)
        raw = self.head(self.rnn(reference))  # (B, 2F, T)
        return bounded_mask(raw.unflatten(1, (2, bins)).transpose(-1, -2))  # (B, 2, T, F)

    def mask_step(self, frame: Tensor, state: State, batch: int) -> tuple[Tensor, State]:
        bins = frame.shape[-1]
        features = spectral_features(frame).flatten(0, 1).flatten(1)  # (B·M, 3F); no frozen sizes when traced
        encoded, encoder_state = self.encoder.step(features, state.get("encoder", EMPTY))
        reference, _ = self.tac.step(encoded.unflatten(0, (batch, -1)), EMPTY)
        reference = reference[:, 0]
        speaker_state = EMPTY
        if self.speaker_dim:
            reference, speaker_state = self.speaker.step(reference, state["speaker"])
        hidden, rnn_state = self.rnn.step(reference, state.get("rnn", EMPTY))
        raw, _ = self.head.step(hidden, EMPTY)
        new = {name: part for name, part in (("encoder", encoder_state), ("speaker", speaker_state), ("rnn", rnn_state))
               if part}
        return bounded_mask(raw.unflatten(1, (2, bins))), new
