"""Multi-channel, array-geometry-agnostic enhancement models that run offline and frame by frame.

``available()`` lists the registered models and their sizes; ``build(name, norm=..., size=...)``
builds one. Every model takes audio (B, M, N) at 16 kHz for any M >= 1 and returns (B, N).
"""

from . import tac_crn, tac_gru  # noqa: F401  (registers the models)
from .base import SpectralEnhancer
from .registry import ModelSpec, available, build, count_parameters, register_model

__all__ = ["SpectralEnhancer", "ModelSpec", "available", "build", "count_parameters", "register_model"]
