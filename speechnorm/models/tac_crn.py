"""TAC-CRN: the convolutional family (a causal convolutional recurrent network).

    per-mic features (log power, cos/sin of phase relative to mic 0) as 3 channels over
    (time, frequency)
      -> encoder: causal conv stages (2 frames × 3 bins, stride 2 in frequency), each
         conv -> normalizer -> PReLU, every mic its own stream
      -> TAC across mics at the bottleneck (per bin) -> the reference mic
      -> recurrent bottleneck: 1×1 conv -> GRU -> normalizer -> 1×1 conv, over time
      -> decoder: transposed convs over frequency, each fed the reference mic's encoder
         output of the same resolution (skip connection), normalizer -> PReLU
      -> complex ratio mask for every bin, applied to the reference mic's spectrum

Convolutions see one past frame; the GRU carries the longer context. All of it is causal.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..norm import make_norm
from .base import SpectralEnhancer, bounded_mask, spectral_features
from .layers import EMPTY, GRU, TAC, Activation, CausalConv2d, FreqTransposedConv, Pointwise, Sequential, State
from .registry import register_model


@register_model(
    "tac_crn",
    sizes={"small": dict(channels=(16, 32, 32), hidden=128), "base": dict(channels=(32, 64, 64), hidden=256)},
    summary="causal conv encoder/decoder with skips, TAC at the bottleneck, GRU bottleneck, complex mask at mic 0",
)
class TacCRN(SpectralEnhancer):
    """Convolutional recurrent multi-channel enhancer. audio (B, M, N) -> (B, N).

    Args:
        norm: any registered normalizer kind, after every conv stage and the GRU.
        channels: output channels of the encoder stages (the decoder mirrors them).
        hidden: GRU size at the bottleneck.
        n_fft, hop: the STFT.
    """

    def __init__(self, norm: str = "online", channels=(16, 32, 32), hidden: int = 128, n_fft: int = 320, hop: int = 160):
        super().__init__(norm, n_fft, hop)
        freqs = [self.stft.bins]
        encoder = []
        for c_in, c_out in zip((3, *channels[:-1]), channels):
            conv = CausalConv2d(c_in, c_out, in_freq=freqs[-1], kernel_time=2, kernel_freq=3, stride_freq=2)
            freqs.append(conv.out_freq)
            encoder.append(Sequential(conv, make_norm(norm, c_out), Activation(c_out)))
        self.encoder = nn.ModuleList(encoder)
        self.tac = TAC(channels[-1], channels[-1])
        flat = channels[-1] * freqs[-1]
        self.bottleneck = Sequential(Pointwise(flat, hidden), GRU(hidden, hidden), make_norm(norm, hidden), Pointwise(hidden, flat))
        decoder = []
        outs = (*channels[:-1][::-1], 2)
        for i, (c_skip, c_out) in enumerate(zip(channels[::-1], outs)):
            up = FreqTransposedConv(2 * c_skip, c_out, kernel_freq=3, stride_freq=2)
            last = i == len(channels) - 1
            decoder.append(Sequential(up) if last else Sequential(up, make_norm(norm, c_out), Activation(c_out)))
        self.decoder = nn.ModuleList(decoder)
        self.bottleneck_shape = (channels[-1], freqs[-1])

    def mask(self, spectrum: Tensor) -> Tensor:
        batch, mics, _, frames, _ = spectrum.shape
        x = spectral_features(spectrum).flatten(0, 1)  # (B·M, 3, T, F)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x.unflatten(0, (batch, mics))[:, 0])
        x = self.tac(x.unflatten(0, (batch, mics)))[:, 0]  # (B, C, T, F')
        x = self.bottleneck(x.transpose(1, 2).flatten(2).transpose(1, 2))  # (B, C·F', T)
        x = x.transpose(1, 2).unflatten(2, self.bottleneck_shape).transpose(1, 2)  # (B, C, T, F')
        for stage, skip in zip(self.decoder, reversed(skips)):
            x = stage(torch.cat((x, skip), dim=1))
        return bounded_mask(x)  # (B, 2, T, F)

    def mask_step(self, frame: Tensor, state: State, batch: int) -> tuple[Tensor, State]:
        encoder_state, decoder_state = state.get("encoder", EMPTY), state.get("decoder", EMPTY)
        new_encoder, new_decoder = {}, {}
        x = spectral_features(frame).flatten(0, 1)  # (B·M, 3, F)
        skips = []
        for index, stage in enumerate(self.encoder):
            x, new_encoder[str(index)] = stage.step(x, encoder_state.get(str(index), EMPTY))
            skips.append(x.unflatten(0, (batch, -1))[:, 0])  # -1: the mic count stays dynamic when traced
        x, _ = self.tac.step(x.unflatten(0, (batch, -1)), EMPTY)
        x, bottleneck_state = self.bottleneck.step(x[:, 0].flatten(1), state.get("bottleneck", EMPTY))  # (B, C·F')
        x = x.unflatten(1, self.bottleneck_shape)  # (B, C, F')
        for index, (stage, skip) in enumerate(zip(self.decoder, reversed(skips))):
            x, new_decoder[str(index)] = stage.step(torch.cat((x, skip), dim=1), decoder_state.get(str(index), EMPTY))
        parts = (("encoder", {k: v for k, v in new_encoder.items() if v}), ("bottleneck", bottleneck_state),
                 ("decoder", {k: v for k, v in new_decoder.items() if v}))
        return bounded_mask(x), {name: part for name, part in parts if part}
