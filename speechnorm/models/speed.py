"""How fast a model streams: per-hop time of ``step`` on the current torch threads."""

from __future__ import annotations

import statistics
import time

import torch

from ..state import flatten, unflatten
from .base import FlatStep, SpectralEnhancer


def median_seconds(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@torch.inference_mode()
def traced_step(model: SpectralEnhancer, mics: int):
    """``step`` traced and frozen with TorchScript: (hop, state) -> (out, state)."""
    model = model.eval()
    initial = flatten(model.initial_state(1, mics=mics))
    paths = list(initial)
    example = (torch.zeros(1, mics, model.hop), *initial.values())
    traced = torch.jit.freeze(torch.jit.trace(FlatStep(model, paths).eval(), example, check_trace=False))

    def step(hop_audio, state):
        flat = flatten(state)
        out, *new = traced(hop_audio, *(flat[path] for path in paths))
        return out, unflatten(dict(zip(paths, new)))

    return step


@torch.inference_mode()
def step_timings(model: SpectralEnhancer, mics: int = 1, hops: int = 200, warmup: int = 20, step=None) -> list[float]:
    """Seconds per step, for ``hops`` consecutive hops of noise (after a warm-up); ``step``
    defaults to ``model.step``."""
    model = model.eval()
    step = step or model.step
    audio = torch.randn(1, mics, model.hop) * 0.1
    state = model.initial_state(1, mics=mics)
    timings = []
    for i in range(warmup + hops):
        start = time.perf_counter()
        _, state = step(audio, state)
        if i >= warmup:
            timings.append(time.perf_counter() - start)
    return timings


def summarize(model: SpectralEnhancer, timings: list[float]) -> dict[str, float]:
    hop_seconds = model.hop / model.sample_rate
    ordered = sorted(timings)
    median = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"median_ms": median * 1e3, "p99_ms": p99 * 1e3, "rtf": median / hop_seconds}
