"""One switch for every normalizer: ``make_norm(kind, num_features, **kw)``.

Normalizers register themselves with ``@register_norm``; every registered kind takes sequences
``(B, C, T)`` or ``(B, C, T, F)`` (time is the stream axis) and follows the streaming contract in
``speechnorm.norm.base``. This is what models use, so every recipe can be run as an ablation by
changing one string.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any, Callable

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


_SPEC = re.compile(r"^\s*([A-Za-z_][\w]*)\s*(?:\((.*)\))?\s*$", re.S)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"online"`` or ``"online(alpha_fwd=0.99, ecm='ac')"`` -> (kind, options).

    The one string a model's ``norm`` argument, a config file and ``--model.norm`` carry, so an
    ablation of a normalizer's *settings* needs no new plumbing. Values are Python literals
    (numbers, strings, True/False/None).
    """
    match = _SPEC.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"normalizer spec {spec!r}: expected NAME or NAME(key=value, ...)")
    kind, body = match.group(1), match.group(2)
    options: dict[str, Any] = {}
    if body and body.strip():
        try:
            call = ast.parse(f"f({body})", mode="eval").body
        except SyntaxError:
            raise ValueError(f"normalizer spec {spec!r}: options must read key=value, ...") from None
        if call.args or any(k.arg is None for k in call.keywords):
            raise ValueError(f"normalizer spec {spec!r}: options must be named (key=value)")
        for keyword in call.keywords:
            try:
                options[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                raise ValueError(f"normalizer spec {spec!r}: {keyword.arg} must be a literal "
                                 "(number, string, True/False/None)") from None
    return kind, options


# The version of the kinds' default settings. A checkpoint records the version it was trained under
# (``speechnorm.task``); ``pin_defaults`` spells out the defaults that changed since, so an old
# checkpoint rebuilds the function it was trained as. Version 1 -> 2: ``online``'s ``alpha_fwd``
# 0.999 -> 0.99.
DEFAULTS_VERSION = 2
_CHANGED_DEFAULTS: dict[int, dict[str, dict[str, Any]]] = {
    1: {"online": {"alpha_fwd": 0.999}},
}


def format_spec(kind: str, options: dict[str, Any]) -> str:
    """The inverse of ``parse_spec``: ``("online", {"alpha_fwd": 0.99})`` -> ``"online(alpha_fwd=0.99)"``."""
    if not options:
        return kind
    return f"{kind}(" + ", ".join(f"{key}={value!r}" for key, value in options.items()) + ")"


def pin_defaults(spec: str, version: int | None) -> str:
    """``spec`` as a checkpoint of defaults ``version`` meant it (``None``: written before versions
    were recorded, i.e. version 1): every default changed since then that the spec leaves unset is
    written out. ``pin_defaults("online", 1)`` -> ``"online(alpha_fwd=0.999)"``; specs of the
    current version come back unchanged."""
    version = 1 if version is None else int(version)
    if version > DEFAULTS_VERSION:
        raise ValueError(f"normalizer defaults version {version} is newer than this speechnorm's ({DEFAULTS_VERSION}); "
                         "upgrade speechnorm to load this checkpoint")
    kind, options = parse_spec(spec)
    pinned = dict(options)
    for older in range(DEFAULTS_VERSION - 1, version - 1, -1):  # the oldest change wins: it is what `version` meant
        for key, value in _CHANGED_DEFAULTS.get(older, {}).get(kind, {}).items():
            if key not in options:
                pinned[key] = value
    return spec if pinned == options else format_spec(kind, pinned)


def make_norm(kind: str, num_features: int, **kwargs) -> SequenceNorm:
    """Build the normalizer ``kind`` for ``num_features`` features.

    ``kind`` is a registered name, optionally with settings: ``"online(alpha_fwd=0.99)"``
    (see ``parse_spec``); keyword arguments override the settings in the string.
    """
    name, options = parse_spec(kind)
    spec = _REGISTRY[name]
    options.update(kwargs)
    try:
        return spec.factory(num_features, **options)
    except TypeError as err:  # an option the kind does not take
        raise ValueError(f"normalizer {kind!r}: {err}") from None
