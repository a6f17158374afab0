"""One switch for every normalizer: ``make_norm(kind, num_features, **kw)``.

Normalizers register themselves with ``@register_norm``; every registered kind takes sequences
``(B, C, T)`` or ``(B, C, T, F)`` (time is the stream axis) and follows the streaming contract in
``speechnorm.norm.base``. This is what models use, so every recipe can be run as an ablation by
changing one string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..registry import Registry
from .base import SequenceNorm

STREAMING_MODES = ("always", "eval only", "never")


@dataclass(frozen=True)
class NormSpec:
    """What the registry knows of a kind: how to build it and whether it can stream."""

    name: str
    factory: Callable[..., SequenceNorm]
    streaming: str  # one of STREAMING_MODES
    summary: str


_REGISTRY: Registry[NormSpec] = Registry("normalizer kind")


def register_norm(name: str, *, streaming: str, summary: str):
    """Decorator registering a factory ``(num_features, **kw) -> SequenceNorm`` under ``name``."""
    if streaming not in STREAMING_MODES:
        raise ValueError(f"streaming must be one of {STREAMING_MODES}, got {streaming!r}")

    def decorate(factory):
        _REGISTRY.add(name, NormSpec(name, factory, streaming, summary))
        return factory

    return decorate


def available() -> dict[str, NormSpec]:
    """The registered kinds, by name."""
    return _REGISTRY.all()


def make_norm(kind: str, num_features: int, **kwargs) -> SequenceNorm:
    """Build the normalizer registered as ``kind`` for ``num_features`` features."""
    return _REGISTRY[kind].factory(num_features, **kwargs)
