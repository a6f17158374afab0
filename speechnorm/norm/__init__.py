"""Normalization layers: Online Normalization and the relatives it is compared against.

``OnlineNorm`` is the paper's layer (both stream axes); ``make_norm(kind, num_features)`` builds
any registered normalizer for (B, C, T[, F]) sequences; ``available()`` lists the kinds.
"""

from . import relatives  # noqa: F401  (registers the relatives)
from .base import NotStreamableError, SequenceNorm
from .online import OnlineNorm
from .registry import NormSpec, available, make_norm, register_norm

__all__ = ["OnlineNorm", "SequenceNorm", "NotStreamableError", "NormSpec", "available", "make_norm", "register_norm"]
