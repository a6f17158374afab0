"""The streaming contract shared by every normalizer in the registry.

Layout: sequences are ``(B, C, T)`` or ``(B, C, T, F)`` — batch, features (channels), time (the
stream axis), and optionally frequency bins. A frame is ``(B, C)`` or ``(B, C, F)``.

    y = norm(x)                                       # whole sequence
    state = norm.initial_state(batch, device=..., dtype=...)   # named: {"mean": ..., "var": ...} or {}
    y_t, state = norm.step(x_t, state)                # one frame; pure, no buffer is mutated

Scanning ``step`` over time from ``initial_state`` reproduces ``norm(x)``. A normalizer whose
output at frame t depends on later frames (or, in training, on other batch elements) is not
``streamable`` and its ``step`` raises ``NotStreamableError``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..state import State, StateSpec, initial_state


class NotStreamableError(ValueError):
    """Raised when a non-causal normalizer is asked to run frame by frame."""


def channel_view(param: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel (C,) tensor to broadcast over (B, C, ...) of rank ``ndim``."""
    return param.view((1, -1) + (1,) * (ndim - 2))


class SequenceNorm(nn.Module):
    """Base class: input checks and the default stateless ``step`` of a frame-local normalizer."""

    #: Whether the operation can ever run frame by frame (subclasses may refine ``streamable``).
    causal: bool = True

    def __init__(self, num_features: int):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features

    @property
    def streamable(self) -> bool:
        return self.causal

    def require_streamable(self) -> None:
        if not self.streamable:
            raise NotStreamableError(
                f"{type(self).__name__} is not causal in its current mode and cannot run frame by "
                "frame; use a streamable normalizer (see speechnorm.norm.available())"
            )

    def check_sequence(self, x: Tensor) -> None:
        """Validate a (B, C, T) or (B, C, T, F) floating-point input."""
        self._check(x, ranks=(3, 4), layout="(B, C, T) or (B, C, T, F)")

    def check_frame(self, x_t: Tensor) -> None:
        """Validate a (B, C) or (B, C, F) frame."""
        self._check(x_t, ranks=(2, 3), layout="a frame (B, C) or (B, C, F)")

    def _check(self, x: Tensor, ranks: tuple[int, ...], layout: str) -> None:
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in ranks:
            raise ValueError(f"{name} expects {layout}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{name} was built for {self.num_features} features (axis 1), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} expects a floating-point tensor, got {x.dtype}")
        if x.numel() == 0:
            raise ValueError(f"{name} got an empty input of shape {tuple(x.shape)}; it needs at least one sample")

    def state_spec(self) -> dict[str, StateSpec]:
        """The state this normalizer carries between frames; frame-local normalizers have none."""
        self.require_streamable()
        return {}

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        """The state before the first frame, from ``state_spec``."""
        return initial_state(self, batch, device, dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One frame. Frame-local normalizers run their sequence forward on a one-frame sequence."""
        self.require_streamable()
        self.check_frame(x_t)
        return self.forward(x_t.unsqueeze(2))[:, :, 0], state  # an index, not squeeze: no If node when exported

    def extra_repr(self) -> str:
        return f"{self.num_features}"

