"""The normalizers users compare Online Norm against, on the registry's (B, C, T[, F]) layout.

Frame-local ones (layer, group, rms) normalize each frame over channels (and bins) and so are
causal with no state. Batch norm is causal only in eval mode (in training its statistics span the
batch and the whole utterance); instance norm spans the whole utterance and never streams.
Streaming Lp keeps running statistics through time like Online Norm, with stop-gradient
statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..state import State, StateSpec
from . import functional as fn
from .base import SequenceNorm, channel_view
from .registry import register_norm
from .scan import linear_scan, shift_in


class _AffineMixin:
    """Per-channel γ (init 1) and β (init 0)."""

    def _init_affine(self, affine: bool, bias: bool = True) -> None:
        self.affine = affine
        self.weight = nn.Parameter(torch.ones(self.num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(self.num_features)) if affine and bias else None

    def _apply_affine(self, y: Tensor) -> Tensor:
        if self.weight is not None:
            y = y * channel_view(self.weight, y.dim())
        if self.bias is not None:
            y = y + channel_view(self.bias, y.dim())
        return y


@register_norm("batch", streaming="eval only", summary="BatchNorm over (batch, time, bins) per channel")
class SequenceBatchNorm(_AffineMixin, SequenceNorm):
    """Batch normalization per channel over batch, time and bins; frozen statistics in eval."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features)
        self.momentum, self.eps = momentum, eps
        self._init_affine(affine)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @property
    def streamable(self) -> bool:
        return not self.training

    def forward(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, self.momentum, self.eps
        )


class FrameGroupNorm(_AffineMixin, SequenceNorm):
    """Per frame: normalize each group of channels over its channels and bins (causal, stateless)."""

    def __init__(self, num_features: int, num_groups: int = 1, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features)
        if num_groups < 1 or num_features % num_groups:
            raise ValueError(f"num_features ({num_features}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.eps = num_groups, eps
        self._init_affine(affine)

    def forward(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        b, c, t = x.shape[:3]
        grouped = x.reshape(b, self.num_groups, c // self.num_groups, t, -1)  # (B, G, C/G, T, F)
        var, mean = torch.var_mean(grouped, dim=(2, 4), keepdim=True, correction=0)
        y = ((grouped - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        return self._apply_affine(y)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, affine={self.affine}"


@register_norm("layer", streaming="always", summary="LayerNorm per frame over channels and bins")
def _layer(num_features: int, **kwargs) -> FrameGroupNorm:
    return FrameGroupNorm(num_features, num_groups=1, **kwargs)


def _default_groups(num_features: int, most: int = 8) -> int:
    return max(g for g in range(1, min(most, num_features) + 1) if num_features % g == 0)


@register_norm("group", streaming="always", summary="GroupNorm per frame over channel groups and bins")
def _group(num_features: int, num_groups: int | None = None, **kwargs) -> FrameGroupNorm:
    return FrameGroupNorm(num_features, num_groups=num_groups or _default_groups(num_features), **kwargs)


@register_norm("instance", streaming="never", summary="InstanceNorm per channel over the whole utterance")
class SequenceInstanceNorm(_AffineMixin, SequenceNorm):
    """Instance normalization per (item, channel) over all frames and bins: needs the future."""

    causal = False

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features)
        self.eps = eps
        self._init_affine(affine)

    def forward(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        dims = tuple(range(2, x.dim()))
        var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
        return self._apply_affine((x - mean) * torch.rsqrt(var + self.eps))


@register_norm("rms", streaming="always", summary="RMSNorm per frame over channels and bins (no centring)")
class FrameRMSNorm(_AffineMixin, SequenceNorm):
    """Per frame: divide by the root mean square over channels and bins; learn γ only."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features)
        self.eps = eps
        self._init_affine(affine, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        dims = (1,) + tuple(range(3, x.dim()))
        return self._apply_affine(x * torch.rsqrt(x.square().mean(dim=dims, keepdim=True) + self.eps))


@register_norm(
    "streaming_lp",
    streaming="always",
    summary="Streaming Lp norm (Liao et al. 2016): running mean and p-th absolute moment, p=1 default",
)
class StreamingLpNorm(_AffineMixin, SequenceNorm):
    """Streaming normalization with the Lp moment (Liao, Kawaguchi, Poggio 2016, arXiv 1610.06160).

    Per stream and channel, with the statistics of the frames *before* t (decay ``alpha``):

        y_t = (x_t - μ_{t-1}) / (m_{t-1}^{1/p} + eps)
        μ_t = α μ_{t-1} + (1-α) mean_F(x_t)
        m_t = α m_{t-1} + (1-α) mean_F(|x_t - μ_{t-1}|^p)

    The statistics are treated as constants in the backward (stop-gradient), the cheap variant.
    Streams start from running statistics that training moves to the streams' mean end state.
    """

    def __init__(self, num_features: int, p: float = 1.0, alpha: float = 0.999, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features)
        if not p > 0:
            raise ValueError(f"p must be positive, got {p!r}")
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)
        self._init_affine(affine)
        self.register_buffer("running_mean", torch.zeros(num_features))
        # The p-th absolute moment of a standard normal, so a fresh layer starts calibrated.
        moment = 2 ** (self.p / 2) * math.gamma((self.p + 1) / 2) / math.sqrt(math.pi)
        self.register_buffer("running_moment", torch.full((num_features,), moment))

    def _deviation(self, x: Tensor, mu: Tensor) -> Tensor:
        return (x - mu.unsqueeze(-1)).abs().pow(self.p).mean(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        frames = x if x.dim() == 4 else x.unsqueeze(-1)  # (B, C, T, F)
        batch = x.shape[0]
        with torch.no_grad():
            mean_x = frames.mean(dim=-1)
            fn.require_finite(mean_x, "StreamingLpNorm")
            mu0 = self.running_mean.expand(batch, -1).to(mean_x.dtype)
            m0 = self.running_moment.expand(batch, -1).to(mean_x.dtype)
            mu = linear_scan(self.alpha, (1 - self.alpha) * mean_x, mu0)
            mu_prev = shift_in(mu0, mu)
            moment = linear_scan(self.alpha, (1 - self.alpha) * self._deviation(frames, mu_prev), m0)
            scale = 1.0 / (shift_in(m0, moment).pow(1.0 / self.p) + self.eps)
            if self.training:
                self.running_mean.copy_(mu[..., -1].mean(dim=0))
                self.running_moment.copy_(moment[..., -1].mean(dim=0))
        y = (frames - mu_prev.unsqueeze(-1)) * scale.unsqueeze(-1)
        y = self._apply_affine(y)
        return y if x.dim() == 4 else y.squeeze(-1)

    def state_spec(self) -> dict[str, StateSpec]:
        return {"mean": StateSpec(self.running_mean.detach(), "running mean μ per feature (B, C)"),
                "moment": StateSpec(self.running_moment.detach(), "running p-th absolute central moment per feature (B, C)")}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        self.check_frame(x_t)
        mu, moment = state["mean"], state["moment"]
        frame = x_t.unsqueeze(-1) if x_t.dim() == 2 else x_t  # (B, C, F); no frozen sizes when traced
        mean_x = frame.mean(dim=-1)
        fn.require_finite(mean_x, "StreamingLpNorm.step")
        y = (frame - mu.unsqueeze(-1)) / (moment.pow(1.0 / self.p) + self.eps).unsqueeze(-1)
        new_moment = self.alpha * moment + (1 - self.alpha) * self._deviation(frame, mu)
        new_mu = self.alpha * mu + (1 - self.alpha) * mean_x
        return self._apply_affine(y.squeeze(-1) if x_t.dim() == 2 else y), {"mean": new_mu, "moment": new_moment}

    def extra_repr(self) -> str:
        return f"{self.num_features}, p={self.p}, alpha={self.alpha}, eps={self.eps}, affine={self.affine}"


#: Mean and standard deviation of ReLU(z) for z ~ N(0, 1).
RELU_MEAN = 1.0 / math.sqrt(2.0 * math.pi)
RELU_STD = math.sqrt((1.0 - 1.0 / math.pi) / 2.0)


@register_norm(
    "normprop",
    streaming="always",
    summary="Normalization Propagation (Arpit et al. 2016): data-free, for ReLU outputs of unit-norm layers",
)
class NormProp(_AffineMixin, SequenceNorm):
    """The activation side of Normalization Propagation (Arpit et al. 2016, arXiv 1603.01431).

    NormProp uses no data statistics: if a layer's pre-activations are standard normal (unit-norm
    weights on normalized inputs), ReLU's output has the known mean sqrt(1/(2π)) and standard
    deviation sqrt((1 - 1/π)/2), which this layer removes analytically:
    y = γ (x - mean) / std + β. It applies where its input is the ReLU of a weight-normalized
    linear or conv layer; the weight normalization itself belongs to that layer.
    """

    def __init__(self, num_features: int, affine: bool = True):
        super().__init__(num_features)
        self._init_affine(affine)

    def forward(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        return self._apply_affine((x - RELU_MEAN) / RELU_STD)


@register_norm("none", streaming="always", summary="identity (no normalization)")
class NoNorm(SequenceNorm):
    """The identity, for the 'no normalization' arm of an ablation."""

    def forward(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        return x
