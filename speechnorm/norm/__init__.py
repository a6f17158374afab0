"""Normalization layers: Online Normalization and the relatives it is compared against.

``OnlineNorm`` is the paper's layer (both stream axes); ``make_norm(kind, num_features)`` builds
any registered normalizer for (B, C, T[, F]) sequences; ``available()`` lists the kinds.
``finite_check(mode)`` / ``raise_if_nonfinite()``: the non-finite input check, immediate on the
CPU and deferred (no host sync) on CUDA.
"""

from . import relatives  # noqa: F401  (registers the relatives)
from .base import NotStreamableError, SequenceNorm
from .finite import finite_check, raise_if_nonfinite, set_finite_check
from .online import OnlineNorm
from .registry import DEFAULTS_VERSION, NormSpec, available, make_norm, pin_defaults, register_norm

__all__ = ["OnlineNorm", "SequenceNorm", "NotStreamableError", "NormSpec", "available", "make_norm", "register_norm",
           "finite_check", "raise_if_nonfinite", "set_finite_check", "DEFAULTS_VERSION", "pin_defaults"]
