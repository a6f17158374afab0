"""``OnlineNorm``: the paper's layer as a drop-in ``torch.nn`` module, with a streaming state."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..state import State, StateSpec
from . import functional as fn
from .autograd import ActivationClamp, LayerScaling, OnlineNormD1Function, OnlineNormFunction
from .base import SequenceNorm, channel_view
from .kernels import d1_kernels
from .registry import register_norm

ECMS = ("ls", "ac", None)
STREAM_AXES = ("batch", "time")
CLAMP_LIMIT = 5.0
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# The forward decay's default on the time axis (the speech setting, ``make_norm("online")``): a 1 s
# time constant at 100 frames/s. The batch axis keeps the paper's 0.999.
# Measured against the paper's 0.999 (10 s) in the normalization ablation (README): no difference
# in quality at input level 0 dB, 0.6 dB better at -30 dB and +10 dB. Checkpoints written before
# this default (0.999 until norm-defaults version 2) keep theirs: see ``registry.pin_defaults``.
TIME_ALPHA_FWD = 0.99


class OnlineNorm(SequenceNorm):
    """Online Normalization (Chiley et al., NeurIPS 2019): out = ECM(γ · y + β).

    ``y`` normalizes every sample with running statistics estimated from the samples *before* it
    (decay ``alpha_fwd``); the backward is the paper's control process (decay ``alpha_bkw``), which
    projects the gradient's mean and y-component out, making it unbiased without any batch.

    Args:
        num_features: C, the size of axis 1.
        alpha_fwd: decay of the forward tracking of μ and σ². Default: the paper's 0.999 on the batch
            axis; ``TIME_ALPHA_FWD`` (0.99, a 1 s time constant at 100 frames/s) on the time axis,
            the setting the normalization ablation chose (README).
        alpha_bkw: decay of the backward control process.
        eps: added to variances (the normalizer's and layer scaling's).
        affine: learn a per-feature scale γ (init 1) and shift β (init 0).
        ecm: error compensation after the affine transform: ``"ls"`` layer scaling (divide each
            sample by the root of its second moment over all features and components),
            ``"ac"`` activation clamping to [-5, 5], or ``None``.
        stream_axis: what forms the stream.
            ``"batch"`` — the paper's setting. Input (N, C), (N, C, L) or (N, C, H, W), ...; the
            N samples, in index order, are consecutive stream samples, and the per-sample moments
            are taken over the trailing axes. μ, σ² (``running_mean``, ``running_var``) and the
            control state (u, v) (``control``) persist across calls in buffers. In eval mode the
            frozen statistics normalize and nothing is updated.
            ``"time"`` — the speech setting. Input (B, C, T) or (B, C, T, F); each batch element is
            an independent stream over the T frames; a frame's components are its F bins. Every
            stream starts from the running statistics and carries (μ, σ²) forward and (u, v)
            backward through time. Train and eval compute the same function, and ``step`` continues
            it one frame at a time. See ``_update_running_stats`` for how training moves the
            running statistics.
    """

    def __init__(
        self,
        num_features: int,
        alpha_fwd: float | None = None,
        alpha_bkw: float = 0.99,
        eps: float = 1e-5,
        affine: bool = True,
        ecm: str | None = "ls",
        stream_axis: str = "batch",
    ):
        super().__init__(num_features)
        if alpha_fwd is None:
            alpha_fwd = TIME_ALPHA_FWD if stream_axis == "time" else 0.999
        for name, value in (("alpha_fwd", alpha_fwd), ("alpha_bkw", alpha_bkw)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps!r}")
        if ecm not in ECMS:
            raise ValueError(f"ecm must be one of {ECMS}, got {ecm!r}")
        if stream_axis not in STREAM_AXES:
            raise ValueError(f"stream_axis must be one of {STREAM_AXES}, got {stream_axis!r}")
        self.alpha_fwd = float(alpha_fwd)
        self.alpha_bkw = float(alpha_bkw)
        self.eps = float(eps)
        self.affine = affine
        self.ecm = ecm
        self.stream_axis = stream_axis
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        # The batch axis's backward control state (u, v); unused on the time axis, where every
        # stream's control starts from zero.
        self.register_buffer("control", torch.zeros(2, num_features))

    @property
    def streamable(self) -> bool:
        return self.stream_axis == "time"

    def reset_running_stats(self) -> None:
        """Restart the stream: μ = 0, σ² = 1, u = v = 0."""
        self.running_mean.zero_()
        self.running_var.fill_(1.0)
        self.control.zero_()

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        if self.stream_axis == "batch":
            return self._forward_batch_axis(x)
        return self._forward_time_axis(x)

    def _forward_batch_axis(self, x: Tensor) -> Tensor:
        self._check(x, ranks=tuple(range(2, 9)), layout="(N, C, ...)")
        samples = x.reshape(x.shape[0], self.num_features, -1)  # (N, C, D)
        kernels = d1_kernels(samples) if self.training and samples.shape[-1] == 1 else None
        if kernels is not None:  # one stream (1, C, N)
            out, mu, var = self._normalize_d1(samples[..., 0].t().unsqueeze(0), self.running_mean.unsqueeze(0),
                                              self.running_var.unsqueeze(0), self.control.unsqueeze(1), kernels)
            out = out[0].t()
            with torch.no_grad():
                self.running_mean.copy_(mu[0])
                self.running_var.copy_(var[0])
        elif self.training:
            out, mu, var = self._normalize(samples, "batch", self.running_mean, self.running_var, self.control)
            with torch.no_grad():
                self.running_mean.copy_(mu[0])
                self.running_var.copy_(var[0])
        else:  # the paper's inference: frozen statistics, nothing updated
            fn.require_finite(x, "OnlineNorm")
            inv_std = torch.rsqrt(self.running_var + self.eps)
            y = (samples - channel_view(self.running_mean, 3)) * channel_view(inv_std, 3)
            out = self._affine_ecm(y.transpose(0, 1).unsqueeze(0))[0].transpose(0, 1)
        return out.reshape(x.shape).to(x.dtype)

    def _forward_time_axis(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        batch = x.shape[0]
        mu0, var0 = self.running_mean.expand(batch, -1), self.running_var.expand(batch, -1)
        kernels = d1_kernels(x) if x.dim() == 3 else None
        if kernels is not None:
            out, mu, var = self._normalize_d1(x, mu0, var0, None, kernels)
            if self.training:
                self._update_running_stats(mu, var)
            return out
        frames = x if x.dim() == 4 else x.unsqueeze(-1)  # (B, C, T, F)
        out, mu, var = self._normalize(frames, "time", mu0, var0, None)
        if self.training:
            self._update_running_stats(mu, var)
        return out if x.dim() == 4 else out.squeeze(-1)

    def _normalize(self, x: Tensor, layout: str, mu0: Tensor, var0: Tensor, control: Tensor | None):
        """The fused training path: normalize, affine and layer scaling in one autograd Function."""
        out, mu, var = OnlineNormFunction.apply(
            x, self.weight, self.bias, mu0, var0, None if control is None else control.unsqueeze(1),
            layout, self.alpha_fwd, self.alpha_bkw, self.eps, self.ecm == "ls",
        )
        if self.ecm == "ac":
            out = ActivationClamp.apply(out, CLAMP_LIMIT)
        return out, mu, var

    def _normalize_d1(self, x: Tensor, mu0: Tensor, var0: Tensor, control: Tensor | None, kernels):
        """``_normalize`` for one-component samples x (P, C, L): one kernel each way (``kernels``:
        the compiled CPU loop or the Triton kernels)."""
        out, mu, var = OnlineNormD1Function.apply(
            x, self.weight, self.bias, mu0, var0, control, self.alpha_fwd, self.alpha_bkw, self.eps, self.ecm == "ls",
            kernels)
        if self.ecm == "ac":
            out = ActivationClamp.apply(out, CLAMP_LIMIT)
        return out, mu, var

    @torch.no_grad()
    def _update_running_stats(self, mu: Tensor, var: Tensor) -> None:
        """Time axis: the running statistics become the pooled end state of the batch's streams.

        Each stream started from (running_mean, running_var) and tracked its frames with decay
        α_f, so its end state μ_T = α_f^T · running_mean + (1 - α_f^T) · (its data's weighted
        mean): continuing the EMA through that stream. Averaging over the B streams (variance
        pooled: mean of σ²_T plus the spread of μ_T across streams) continues it through the batch,
        with no momentum to tune. The running statistics are only the *initial state* of every
        stream, in training and in inference alike, so train and eval run the same function: the
        network learns to use exactly the warm-up that streaming inference will see.
        """
        self.running_mean.copy_(mu.mean(dim=0))
        self.running_var.copy_(var.mean(dim=0) + mu.var(dim=0, correction=0))

    def _affine_ecm(self, y: Tensor) -> Tensor:
        """γ · y + β, then error compensation per sample, on the canonical (P, C, L, D) layout or
        on one frame (P, C, D); a sample is one (C, D) slice either way."""
        h = y
        if self.affine:
            h = torch.addcmul(channel_view(self.bias, h.dim()), h, channel_view(self.weight, h.dim()))
        differentiable = torch.is_grad_enabled() and h.requires_grad and not torch.jit.is_tracing()
        if self.ecm == "ls":
            dims = (1, h.dim() - 1)
            h = LayerScaling.apply(h, dims, self.eps) if differentiable else fn.layer_scaling_fwd(h, dims, self.eps)[0]
        elif self.ecm == "ac":
            h = ActivationClamp.apply(h, CLAMP_LIMIT) if differentiable else h.clamp(-CLAMP_LIMIT, CLAMP_LIMIT)
        return h

    # ------------------------------------------------------------------ streaming (time axis)
    def state_spec(self) -> dict[str, StateSpec]:
        """μ and σ², each (B, C): every stream starts from the running statistics learned in training."""
        self.require_streamable()
        return {"mean": StateSpec(self.running_mean.detach(), "Online Norm's running mean μ per feature (B, C)"),
                "var": StateSpec(self.running_var.detach(), "Online Norm's running variance σ² per feature (B, C)")}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One frame (B, C) or (B, C, F) -> (the same shape, the new {"mean", "var"}). Pure: no buffer changes."""
        self.require_streamable()
        self.check_frame(x_t)
        mu, var = state["mean"], state["var"]
        frame = x_t.unsqueeze(-1) if x_t.dim() == 2 else x_t  # (B, C, D); no frozen sizes when traced
        if frame.dtype in _LOW_PRECISION:
            frame = frame.float()
        y, new_mu, new_var = fn.online_norm_step(frame, mu, var, self.alpha_fwd, self.eps)
        out = self._affine_ecm(y)
        if out.dtype != x_t.dtype:
            out = out.to(x_t.dtype)
        return (out.squeeze(-1) if x_t.dim() == 2 else out), {"mean": new_mu, "var": new_var}

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, eps={self.eps}, "
            f"affine={self.affine}, ecm={self.ecm!r}, stream_axis={self.stream_axis!r}"
        )


@register_norm(
    "online",
    streaming="always",
    summary="Online Normalization (Chiley et al. 2019) over time; unbiased gradient via the control process",
)
def _online_over_time(num_features: int, **kwargs) -> OnlineNorm:
    kwargs.setdefault("stream_axis", "time")
    if kwargs["stream_axis"] != "time":
        raise ValueError("make_norm('online') normalizes sequences over time; build OnlineNorm directly for the batch axis")
    return OnlineNorm(num_features, **kwargs)


@register_norm(
    "online_shared",
    streaming="eval only",
    summary="Online Norm with statistics shared by the batch's streams, time-major (the paper's recurrent setting); "
            "frozen in eval",
)
class SharedOnlineNorm(OnlineNorm):
    """Online Norm as the paper runs it inside recurrent cells: one stream of samples per feature,
    shared by every sequence of the batch.

    Training: the (B, C, T[, F]) input is read as one stream of T·B samples in time-major order
    (frame 0 of every batch element, then frame 1, ...) and normalized by ``OnlineNorm`` on its
    batch axis: μ, σ² and the control state (u, v) are shared by the batch's sequences and carried
    across training steps, with the paper's recurrent decays (α_f = 8191/8192, α_b = 31/32 per
    sample). Causal in time, but a sequence's output depends on the other sequences of its batch,
    so it does not stream in training. Eval: the frozen statistics (the paper's inference), so a
    deployed model is frame-local and stateless, like a BatchNorm one. What it costs is the gap
    between the statistics a sample was normalized with in training and the frozen ones it meets
    in inference; the per-stream setting (``online``) has none.
    """

    def __init__(self, num_features: int, alpha_fwd: float = 8191 / 8192, alpha_bkw: float = 31 / 32,
                 eps: float = 1e-5, affine: bool = True, ecm: str | None = "ls"):
        super().__init__(num_features, alpha_fwd, alpha_bkw, eps, affine, ecm, stream_axis="batch")

    @property
    def streamable(self) -> bool:
        return not self.training

    def forward(self, x: Tensor) -> Tensor:
        self.check_sequence(x)
        frames = x if x.dim() == 4 else x.unsqueeze(-1)  # (B, C, T, F)
        batch, channels, length, width = frames.shape
        samples = frames.permute(2, 0, 1, 3).reshape(length * batch, channels, width)  # time-major
        out = self._forward_batch_axis(samples).reshape(length, batch, channels, width).permute(1, 2, 0, 3)
        return out if x.dim() == 4 else out[..., 0]

    def state_spec(self) -> dict[str, StateSpec]:
        """None: in eval the statistics are frozen, so every frame is normalized on its own."""
        self.require_streamable()
        return {}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return SequenceNorm.step(self, x_t, state)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shared by the batch's sequences, time-major"
