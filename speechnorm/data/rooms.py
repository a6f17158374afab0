"""Random rooms and arrays: pyroomacoustics' image sources for the early response, a diffuse late tail.

Arrays (2–8 mics): ``circular`` (radius 3–10 cm), ``linear`` (2–5 cm spacing) and ``cluster``
(mics scattered in a 12 cm ball). The ``seen`` geometries train the models; ``unseen`` ones —
clusters and many-mic wide circles — are held out for the "unseen arrays" test split.
The target is the speaker's direct path plus early reflections (the first 50 ms after the direct
sound) at the reference mic (mic 0); the mixture adds noise sources at a random SNR, then per-mic
gains (±``mic_gain_db``) and sensor noise.

Reverberation (``late_reverb``): image sources up to order ``MAX_ORDER`` give the direct sound and
early reflections exactly; beyond ``TAIL_START`` after the direct sound they are replaced by a
stochastic diffuse tail (Gaussian noise under an exp(-6.9 t / T60) envelope, its energy set by
diffuse-field theory: reverberant / direct energy = (r / r_c)^2 with the critical distance
r_c^2 = 0.161 V / (16 pi T60)), with the diffuse-field coherence sinc(2 pi f d / c) between mics.
So the full decay of any T60 is there (the image sources alone, capped at order 12, stop at
~0.3 s of decay whatever the T60), at the cost of ~10 ms per room instead of seconds for
full-order image sources or ray tracing (measured: pyroomacoustics' hybrid ray tracing took
0.5-2.2 s per 4-mic, 4-source room on this machine).
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
MAX_ORDER = 12  # image-source order cap for the early response; the late tail is stochastic
TAIL_START = 0.050  # seconds after the direct sound where the diffuse tail takes over (= the target's early window)
TAIL_FADE = 0.020  # crossfade from image sources to the tail, seconds
SPEED_OF_SOUND = 343.0


@dataclass(frozen=True)
class MixSpec:
    """The random ranges of a simulated mixture."""

    snr_db: tuple[float, float] = (-5.0, 15.0)
    t60: tuple[float, float] = (0.15, 0.7)
    noise_sources: tuple[int, int] = (1, 3)
    distance: tuple[float, float] | None = None  # speaker to array centre, metres (None: anywhere in the room)
    late_reverb: bool = False  # the diffuse late tail (module docstring); off reproduces the order-capped rooms
    mic_gain_db: float = 0.0  # each mic's gain drawn in ±this
    sensor_snr_db: tuple[float, float] | None = None  # white sensor noise per mic, this far below the speech
    # noise kinds and their weights: "noise" (any file of the noise folder), "recorded" (real
    # recordings), "generated" (built-in kinds), "babble" (3-8 other talkers of the same split, each
    # its own source), "talker" (one competing talker, at an SNR of at least ``talker_snr_floor_db``:
    # below that, which voice is the target is not defined without an enrolled speaker)
    noise_kinds: tuple[tuple[str, float], ...] = (("noise", 1.0),)
    talker_snr_floor_db: float = 0.0


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


def simulate(rng: np.random.Generator, speech: Tensor, noises: list[Tensor], geometry: np.ndarray, spec: MixSpec,
             t60: float | None = None, snr_db: float | None = None, interferers: list[Tensor] = (),
             sir_db: float | None = None):
    """Mix ``speech`` (N,) and noise signals in a random room as heard by ``geometry``.

    ``t60`` and ``snr_db`` are drawn from ``spec`` unless given. ``interferers``: competing
    talkers, each from its own position at the target's distance range, at ``sir_db`` (see
    ``mix``). Returns noisy (M, N) and target (N,): direct path + early reflections at mic 0.
    """
    room_dim = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.5, 4)])
    t60 = max(rng.uniform(*spec.t60) if t60 is None else t60, shortest_t60(room_dim))
    absorption, order = pra.inverse_sabine(t60, room_dim)
    room = pra.ShoeBox(room_dim, fs=SAMPLE_RATE, materials=pra.Material(absorption), max_order=min(order, MAX_ORDER))
    centre = _position(rng, room_dim, margin=0.6)
    room.add_microphone_array(centre[:, None] + geometry)
    room.add_source(_speaker_position(rng, room_dim, centre, spec.distance))
    for _ in noises:
        room.add_source(_position(rng, room_dim))
    for _ in interferers:  # drawn after everything else: items without interferers stay as they were
        room.add_source(_speaker_position(rng, room_dim, centre, spec.distance))
    room.compute_rir()
    mics = geometry.shape[1]
    rirs = [[room.rir[m][s] for m in range(mics)] for s in range(1 + len(noises) + len(interferers))]
    if spec.late_reverb:
        rirs = [with_late_tail(rng, r, t60, room_dim, geometry) for r in rirs]
    length = max(len(r) for per_source in rirs for r in per_source)
    rirs = [torch.stack([torch.nn.functional.pad(torch.as_tensor(np.asarray(r, np.float32)), (0, length - len(r)))
                         for r in per_source]) for per_source in rirs]
    noise_rirs, interferer_rirs = rirs[1 : 1 + len(noises)], rirs[1 + len(noises) :]
    return mix(rng, speech, noises, rirs[0], noise_rirs, spec, snr_db=snr_db, interferers=interferers,
               interferer_rirs=interferer_rirs, sir_db=sir_db)


def _speaker_position(rng: np.random.Generator, room: np.ndarray, centre: np.ndarray,
                      distance: tuple[float, float] | None) -> np.ndarray:
    """Anywhere in the room, or at a drawn distance from the array centre (the farthest that fits
    when the room is too small for the drawn one)."""
    if distance is None:
        return _position(rng, room)
    low, high = np.array([0.3, 0.3, 1.0]), np.array([room[0] - 0.3, room[1] - 0.3, min(2.0, room[2] - 0.3)])
    wanted = rng.uniform(*distance)
    for _ in range(50):
        azimuth, height = rng.uniform(0, 2 * np.pi), rng.uniform(low[2], high[2])
        flat = np.sqrt(max(wanted**2 - (height - centre[2]) ** 2, 0.01))
        point = np.array([centre[0] + flat * np.cos(azimuth), centre[1] + flat * np.sin(azimuth), height])
        if np.all(point >= low) and np.all(point <= high):
            return point
        wanted = max(distance[0], 0.9 * wanted)
    return np.clip(point, low, high)


def diffuse_noise(rng: np.random.Generator, geometry: np.ndarray, samples: int) -> np.ndarray:
    """(M, samples) unit-variance noise with the diffuse-field coherence sinc(2 pi f d / c) between mics."""
    mics = geometry.shape[1]
    freqs = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE)
    distances = np.linalg.norm(geometry[:, :, None] - geometry[:, None, :], axis=0)
    coherence = np.sinc(2 * freqs[:, None, None] * distances[None] / SPEED_OF_SOUND)  # np.sinc(x) = sin(pi x)/(pi x)
    factor = np.linalg.cholesky(coherence + 1e-6 * np.eye(mics))
    white = rng.standard_normal((len(freqs), mics, 2)) @ np.array([1.0, 1j])
    spectra = np.einsum("fij,fj->fi", factor, white)
    noise = np.fft.irfft(spectra.T, n=samples, axis=1)
    return noise / (noise.std(axis=1, keepdims=True) + 1e-12)


def with_late_tail(rng: np.random.Generator, rirs: list[np.ndarray], t60: float, room_dim: np.ndarray,
                   geometry: np.ndarray) -> list[np.ndarray]:
    """One source's per-mic image-source RIRs with their late part replaced by a diffuse tail."""
    direct = min(int(np.abs(r).argmax()) for r in rirs)
    start = direct + int(TAIL_START * SAMPLE_RATE)
    fade = int(TAIL_FADE * SAMPLE_RATE)
    length = direct + int(min(1.2 * t60, 2.0) * SAMPLE_RATE)
    volume = float(np.prod(room_dim))
    critical_sq = 0.161 * volume / (16 * np.pi * t60)
    energy = 1.0 / critical_sq  # reverberant energy, in pyroomacoustics' units (direct sound 1/r at distance r)
    times = np.maximum(np.arange(length) - direct, 0) / SAMPLE_RATE
    envelope = np.sqrt(energy * 13.8 / (t60 * SAMPLE_RATE)) * np.exp(-6.9 * times / t60)
    ramp = np.clip((np.arange(length) - start) / fade, 0.0, 1.0)
    tail = diffuse_noise(rng, geometry, length) * (envelope * np.sin(0.5 * np.pi * ramp))[None]
    out = []
    for m, rir in enumerate(rirs):
        early = np.zeros(length)
        n = min(len(rir), length)
        early[:n] = rir[:n]
        out.append(early * np.cos(0.5 * np.pi * ramp) + tail[m])
    return out


def mix(rng: np.random.Generator, speech: Tensor, noises: list[Tensor], target_rir: Tensor, noise_rirs: list[Tensor],
        spec: MixSpec, snr_db: float | None = None, interferers: list[Tensor] = (), interferer_rirs: list[Tensor] = (),
        sir_db: float | None = None) -> tuple[Tensor, Tensor]:
    """Speech and noises (N,) through room impulse responses (M, K) — simulated or measured.

    Returns noisy (M, N) at a random SNR (measured at mic 0) and the target (N,): the speech
    through the first 50 ms of mic 0's response after its direct-path peak. Each of
    ``interferers`` (competing talkers, through ``interferer_rirs``) is set to ``sir_db`` below
    the reverberant target at mic 0; they are not part of the noise the SNR measures.
    """
    samples = speech.shape[-1]

    def heard(signal: Tensor, rirs: Tensor) -> Tensor:  # (M, N)
        return fftconvolve(signal.expand(rirs.shape[0], -1), rirs)[:, :samples]

    reverberant = heard(speech, target_rir)
    direct = int(target_rir[0].abs().argmax())
    target = fftconvolve(speech, target_rir[0, : direct + int(EARLY_SECONDS * SAMPLE_RATE)])[:samples]
    noise = sum(heard(n, r) for n, r in zip(noises, noise_rirs))
    snr = rng.uniform(*spec.snr_db) if snr_db is None else snr_db
    gain = torch.sqrt(reverberant[0].square().mean() / (noise[0].square().mean() * 10 ** (snr / 10) + 1e-12))
    noisy = reverberant + gain * noise
    if len(interferers) != len(interferer_rirs) or (len(interferers) and sir_db is None):
        raise ValueError("give one RIR per interferer, and sir_db")
    for talker, rirs in zip(interferers, interferer_rirs):
        voice = heard(talker, rirs)
        noisy = noisy + voice * torch.sqrt(reverberant[0].square().mean()
                                           / (voice[0].square().mean() * 10 ** (sir_db / 10) + 1e-12))
    if spec.sensor_snr_db is not None:
        level = reverberant[0].square().mean() / 10 ** (rng.uniform(*spec.sensor_snr_db) / 10)
        noisy = noisy + torch.sqrt(level) * torch.from_numpy(rng.standard_normal(tuple(noisy.shape))).float()
    if spec.mic_gain_db:
        gains = torch.from_numpy(10 ** (rng.uniform(-spec.mic_gain_db, spec.mic_gain_db, noisy.shape[0]) / 20)).float()
        noisy, target = noisy * gains[:, None], target * gains[0]  # the target is what mic 0 hears
    peak = max(noisy.abs().max().item(), target.abs().max().item(), 1e-9)
    scale = rng.uniform(0.3, 0.9) / peak
    return noisy * scale, target * scale
