"""Random rooms and arrays, simulated with pyroomacoustics' image source method.

Arrays (2–8 mics): ``circular`` (radius 3–10 cm), ``linear`` (2–5 cm spacing) and ``cluster``
(mics scattered in a 12 cm ball). The ``seen`` geometries train the models; ``unseen`` ones —
clusters and many-mic wide circles — are held out for the "unseen arrays" test split.
The target is the speaker's direct path plus early reflections (the first 50 ms after the direct
sound) at the reference mic (mic 0); the mixture adds 1–3 noise sources at a random SNR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyroomacoustics as pra
import torch
from torch import Tensor
from torchaudio.functional import fftconvolve

SAMPLE_RATE = 16_000
EARLY_SECONDS = 0.050
MAX_ORDER = 12  # image-source order cap: late reverberation is truncated, simulation stays ~0.1 s


@dataclass(frozen=True)
class MixSpec:
    """The random ranges of a simulated mixture."""

    snr_db: tuple[float, float] = (-5.0, 15.0)
    t60: tuple[float, float] = (0.15, 0.7)
    noise_sources: tuple[int, int] = (1, 3)


def array_geometry(rng: np.random.Generator, kind: str, mics: int) -> np.ndarray:
    """(3, mics) mic offsets around the array centre, metres; mic 0 is the reference."""
    if kind == "circular":
        radius = rng.uniform(0.03, 0.10)
        angles = np.linspace(0, 2 * np.pi, mics, endpoint=False) + rng.uniform(0, 2 * np.pi)
        return np.stack([radius * np.cos(angles), radius * np.sin(angles), np.zeros(mics)])
    if kind == "linear":
        spacing = rng.uniform(0.02, 0.05)
        axis = np.array([np.cos(a := rng.uniform(0, np.pi)), np.sin(a), 0.0])
        return np.outer(axis, (np.arange(mics) - (mics - 1) / 2) * spacing)
    if kind == "cluster":
        return rng.uniform(-0.06, 0.06, size=(3, mics))
    raise ValueError(f"unknown array kind {kind!r}")


def sample_mics(rng: np.random.Generator, unseen: bool) -> int:
    """Seen arrays have 2–6 mics; unseen ones 2–8 (7–8 only there)."""
    return int(rng.integers(2, 9) if unseen else rng.integers(2, 7))


def sample_array(rng: np.random.Generator, unseen: bool, mics: int) -> tuple[str, np.ndarray]:
    """A geometry from the seen pool (circular or linear, up to 6 mics) or the unseen pool
    (clusters of any size, or circles of 7–8 mics)."""
    if unseen:
        kind = "circular" if mics >= 7 and rng.random() < 0.5 else "cluster"
    else:
        kind = "circular" if rng.random() < 0.5 else "linear"
    return kind, array_geometry(rng, kind, mics)


def shortest_t60(room_dim: np.ndarray) -> float:
    """The shortest T60 Sabine's formula reaches in this room (walls absorbing 95 %), seconds:
    a big room cannot be as dry as a small one, so a drawn T60 below this is raised to it."""
    volume = float(np.prod(room_dim))
    surface = 2.0 * float(room_dim[0] * room_dim[1] + room_dim[0] * room_dim[2] + room_dim[1] * room_dim[2])
    return 24.0 * np.log(10.0) * volume / (343.0 * surface * 0.95)


def _position(rng: np.random.Generator, room: np.ndarray, margin: float = 0.5) -> np.ndarray:
    return rng.uniform([margin, margin, 1.0], [room[0] - margin, room[1] - margin, min(2.0, room[2] - 0.3)])


def simulate(rng: np.random.Generator, speech: Tensor, noises: list[Tensor], geometry: np.ndarray, spec: MixSpec):
    """Mix ``speech`` (N,) and noise signals in a random room as heard by ``geometry``.

    Returns noisy (M, N) and target (N,): direct path + early reflections at mic 0.
    """
    samples = speech.shape[-1]
    room_dim = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.5, 4)])
    t60 = max(rng.uniform(*spec.t60), shortest_t60(room_dim))
    absorption, order = pra.inverse_sabine(t60, room_dim)
    room = pra.ShoeBox(room_dim, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=min(order, MAX_ORDER))
    centre = _position(rng, room_dim, margin=0.6)
    room.add_microphone_array(centre[:, None] + geometry)
    room.add_source(_position(rng, room_dim))
    for _ in noises:
        room.add_source(_position(rng, room_dim))
    room.compute_rir()
    mics = geometry.shape[1]
    rirs = [torch.stack([_pad_to(torch.as_tensor(room.rir[m][s], dtype=torch.float32), room.rir) for m in range(mics)])
            for s in range(1 + len(noises))]
    return mix(rng, speech, noises, rirs[0], rirs[1:], spec)


def _pad_to(rir: Tensor, all_rirs) -> Tensor:
    longest = max(len(r) for per_mic in all_rirs for r in per_mic)
    return torch.nn.functional.pad(rir, (0, longest - rir.numel()))


def mix(rng: np.random.Generator, speech: Tensor, noises: list[Tensor], target_rir: Tensor, noise_rirs: list[Tensor],
        spec: MixSpec) -> tuple[Tensor, Tensor]:
    """Speech and noises (N,) through room impulse responses (M, K) — simulated or measured.

    Returns noisy (M, N) at a random SNR (measured at mic 0) and the target (N,): the speech
    through the first 50 ms of mic 0's response after its direct-path peak.
    """
    samples = speech.shape[-1]

    def heard(signal: Tensor, rirs: Tensor) -> Tensor:  # (M, N)
        return fftconvolve(signal.expand(rirs.shape[0], -1), rirs)[:, :samples]

    reverberant = heard(speech, target_rir)
    direct = int(target_rir[0].abs().argmax())
    target = fftconvolve(speech, target_rir[0, : direct + int(EARLY_SECONDS * SAMPLE_RATE)])[:samples]
    noise = sum(heard(n, r) for n, r in zip(noises, noise_rirs))
    snr = rng.uniform(*spec.snr_db)
    gain = torch.sqrt(reverberant[0].square().mean() / (noise[0].square().mean() * 10 ** (snr / 10) + 1e-12))
    noisy = reverberant + gain * noise
    peak = max(noisy.abs().max().item(), target.abs().max().item(), 1e-9)
    scale = rng.uniform(0.3, 0.9) / peak
    return noisy * scale, target * scale
