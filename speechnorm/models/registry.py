"""Models by name: ``build(name, norm="online", size="small", **config)``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..registry import Registry
from .base import SpectralEnhancer


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type
    sizes: dict[str, dict] = field(default_factory=dict)
    summary: str = ""


_MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, *, sizes: dict[str, dict], summary: str):
    """Class decorator: register an enhancement model and its named sizes."""

    def decorate(cls):
        _MODELS.add(name, ModelSpec(name, cls, sizes, summary))
        return cls

    return decorate


def available() -> dict[str, ModelSpec]:
    """The registered models, by name."""
    return _MODELS.all()


def build(name: str, norm: str = "online", size: str = "small", **config) -> SpectralEnhancer:
    """Build model ``name`` at a named ``size``, with ``norm`` any registered normalizer kind;
    keyword arguments override the size's settings."""
    spec = _MODELS[name]
    if size not in spec.sizes:
        raise ValueError(f"model {name!r} has no size {size!r}; choose one of: {', '.join(spec.sizes)}")
    return spec.cls(norm=norm, **{**spec.sizes[size], **config})


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
