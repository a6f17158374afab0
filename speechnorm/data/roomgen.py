"""Rooms made in batches: B shoebox rooms × S sources × M mics per call, in torch, on the CPU or a GPU.

A hybrid room impulse response, as the field makes them for training data:

- **Early part: image sources** (Allen & Berkley) up to ``CROSSFADE[1]`` after the earliest direct
  sound of each source, each placed with a fractional delay (a Hann-windowed sinc of ``taps``
  taps, not a rounded sample: 5 cm between mics is 2.3 samples at 16 kHz). One pressure
  reflection coefficient for all walls, chosen so that the image-source model of the room
  decays with the asked T60 (``reflection_for_t60``; Eyring's formula gives a slower decay). Amplitude
  β^reflections / (4π·distance), pyroomacoustics' convention.
- **Late part: a diffuse tail** from ``CROSSFADE[0]`` on (crossfaded with the images until
  ``CROSSFADE[1]``): Gaussian noise made in the STFT domain, given per bin the diffuse-field
  coherence between mics Γ_ij(f) = sin(2π f d_ij / c) / (2π f d_ij / c) through a square root of Γ
  (``eigh``), and per bin the decay exp(−6.9 t / T60(f)) with the frequency-dependent T60 of
  ``T60_SHAPE`` (``t60`` is the mid-band value, 500 Hz–1 kHz). Its level is the image-source
  energy density of diffuse-field theory, c / (4π V fs) · exp(−13.8 t / T60) per sample, t from
  emission, so the tail continues the images' decay rather than being set by hand.
- **A high-pass** (2nd-order Butterworth at ``highpass_hz``) of the images, against the DC that
  all-positive image pulses build up (the tail is zero-mean).

``Responses.early`` gives the training target's response: direct sound + the first 50 ms, from
the same images (the tail starts after it).

Validated against pyroomacoustics' full image-source simulation of the same rooms
(``tests/unit/test_roomgen.py``): DRR and C50 within 1 dB, mid-band T60 within 10 %, and the
late part's coherence between mics against the theoretical sinc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchaudio.functional import lfilter

SAMPLE_RATE = 16_000
SPEED_OF_SOUND = 343.0
EARLY_WINDOW = 0.050  # the target: direct sound + this much
# images fade out and the tail fades in over this stretch after the direct sound; C50 and T60 came
# closest to full image sources with it at 70-90 ms (at 50-70 ms the tail, continuous over
# directions, stands in where a small room's images still decay faster: C50 0.9 dB off)
# Images fade out and the tail fades in over this stretch after the direct sound. C50 and T60 came
# closest to full image sources with it at 70-90 ms: at 50-70 ms the tail (a mean over directions)
# stands in where a small room's images still decay faster, and C50 came 0.9 dB off.
CROSSFADE = (0.070, 0.090)
#: T60 per octave band relative to the mid-band T60 (air and furnishings absorb more at high frequencies)
T60_SHAPE = ((125.0, 1.2), (250.0, 1.1), (500.0, 1.0), (1000.0, 1.0), (2000.0, 0.9), (4000.0, 0.75), (8000.0, 0.55))
TAIL_FFT, TAIL_HOP = 512, 256  # with a square-root Hann window, Σ w² = 1 at every sample


@dataclass
class RoomBatch:
    """B shoebox rooms, each with S sources and M mics (absolute positions, metres).

    size: (B, 3) room dimensions; t60: (B,) mid-band T60 in seconds; sources: (B, S, 3); mics: (B, M, 3).
    """

    size: Tensor
    t60: Tensor
    sources: Tensor
    mics: Tensor

    def __post_init__(self):
        self.size, self.t60 = torch.as_tensor(self.size, dtype=torch.float32), torch.as_tensor(self.t60, dtype=torch.float32)
        self.sources = torch.as_tensor(self.sources, dtype=torch.float32)
        self.mics = torch.as_tensor(self.mics, dtype=torch.float32)
        if self.size.ndim != 2 or self.size.shape[1] != 3:
            raise ValueError(f"size must be (B, 3) room dimensions in metres, got {tuple(self.size.shape)}")
        rooms = self.size.shape[0]
        if rooms == 0:
            raise ValueError("a room batch needs at least one room, got size of shape (0, 3)")
        for name, value in (("sources", self.sources), ("mics", self.mics)):
            if value.ndim != 3 or value.shape[0] != rooms or value.shape[2] != 3 or value.shape[1] == 0:
                raise ValueError(f"{name} must be (B={rooms}, count >= 1, 3) positions in metres, got {tuple(value.shape)}")
        if self.t60.shape != (rooms,):
            raise ValueError(f"t60 must be (B={rooms},) seconds, got {tuple(self.t60.shape)}")
        if not (torch.isfinite(self.size).all() and (self.size > 0.5).all()):
            raise ValueError(f"room dimensions must be finite and above 0.5 m, got {self.size.tolist()}")
        bad = ~(torch.isfinite(self.t60) & (self.t60 >= 0.05) & (self.t60 <= 5.0))
        if bad.any():
            room = int(bad.nonzero()[0, 0])
            raise ValueError(f"t60 of room {room} is {float(self.t60[room]):g} s; it must be within [0.05, 5] s")
        for name, value in (("sources", self.sources), ("mics", self.mics)):
            outside = ~(torch.isfinite(value) & (value > 0) & (value < self.size[:, None, :])).all(dim=2)
            if outside.any():
                room, which = (int(i) for i in outside.nonzero()[0])
                raise ValueError(f"{name}[{room}, {which}] at {[round(v, 3) for v in value[room, which].tolist()]} m is "
                                 f"outside room {room} of size {[round(v, 3) for v in self.size[room].tolist()]} m: "
                                 "every position must be strictly inside the walls")

    def to(self, device) -> "RoomBatch":
        return RoomBatch(self.size.to(device), self.t60.to(device), self.sources.to(device), self.mics.to(device))


@dataclass
class Responses:
    """rir: (B, S, M, L) room impulse responses; direct: (B, S, M) direct-path delays in samples
    (fractional); length: (B,) samples that hold the response of each room (the rest is zeros)."""

    rir: Tensor
    direct: Tensor
    length: Tensor

    def early(self, window: float = EARLY_WINDOW, sample_rate: int = SAMPLE_RATE) -> Tensor:
        """(B, S, M, L) the direct sound and the first ``window`` seconds after it, per mic: the
        target's response. The images before the crossfade are the same as in ``rir``."""
        ends = (self.direct.floor() + round(window * sample_rate)).long()
        keep = torch.arange(self.rir.shape[-1], device=self.rir.device) < ends[..., None]
        return self.rir * keep


def _directions(count: int = 512) -> Tensor:
    """(count, 3) |unit vectors| spread evenly over the sphere (a Fibonacci lattice)."""
    k = torch.arange(count, dtype=torch.float64) + 0.5
    polar, azimuth = torch.acos(1 - 2 * k / count), math.pi * (1 + 5**0.5) * k
    return torch.stack([polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin(), polar.cos()], dim=1).abs().float()


DIRECTIONS = _directions()


def reflection_rates(size: Tensor) -> Tensor:
    """(B, U) wall reflections per second of sound travelling along each of ``DIRECTIONS``:
    c · Σ_i |u_i| / L_i. An image source at time t in direction u has undergone rate · t reflections."""
    return SPEED_OF_SOUND * (DIRECTIONS.to(size.device)[None] / size[:, None, :]).sum(dim=2)


def late_energy(size: Tensor, reflection: Tensor, times: Tensor) -> Tensor:
    """(B, T) the images' mean energy factor β^(2 n) at ``times`` (B, T) seconds from emission,
    averaged over directions: the late decay of the image-source model of these rooms. (Its
    mean exponent is Eyring's decay; the mean of the exponentials decays slower, as a shoebox's
    axial and tangential paths do.)"""
    rates = reflection_rates(size)  # (B, U)
    return torch.exp(2 * torch.log(reflection)[:, None, None] * rates[:, :, None] * times[:, None, :]).mean(dim=1)


def reflection_for_t60(size: Tensor, t60: Tensor) -> Tensor:
    """(B,) the walls' pressure reflection coefficient β that makes the image-source model of each
    room decay with ``t60`` (T20 of its Schroeder curve: the −5 to −25 dB slope, times 3).

    With β = exp(−k/2), the energy decays as mean_u exp(−k·rate_u·t), whose Schroeder integral is
    mean_u exp(−k·rate_u·t) / (k·rate_u): the measured T60 scales as 1/k, so one evaluation at k = 1
    per room gives β exactly. Eyring's β (the decay of the mean exponent) would give a slower
    decay than asked: 0.57 s measured for 0.50 s asked in a 6 × 4.2 × 3 m room."""
    rates = reflection_rates(size).double()  # (B, U)
    grid = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-6, 0, 1200, dtype=torch.float64)]).to(size.device)  # s at k = 1
    schroeder = (torch.exp(-rates[:, :, None] * grid) / rates[:, :, None]).mean(dim=1)  # (B, G)
    level = 10 * torch.log10(schroeder / schroeder[:, :1])
    def crossing(db: float) -> Tensor:
        index = (level > db).sum(dim=1).clamp(1, len(grid) - 1)
        low, high = level.gather(1, (index - 1)[:, None])[:, 0], level.gather(1, index[:, None])[:, 0]
        weight = (low - db) / (low - high)
        return grid[index - 1] * (1 - weight) + grid[index] * weight
    unit_t60 = 3 * (crossing(-25.0) - crossing(-5.0))
    return torch.exp(-0.5 * unit_t60 / t60.double()).float()


def band_t60(t60: Tensor, freqs: Tensor, shape: tuple[tuple[float, float], ...] = T60_SHAPE) -> Tensor:
    """(B, F) T60 per frequency: ``t60`` (mid band) times ``shape`` ((Hz, ratio), ...) interpolated
    in log frequency, constant beyond its ends."""
    shape = tuple(shape) if len(shape) > 1 else (*shape, (shape[0][0] * 2, shape[0][1]))
    centres = torch.tensor([math.log(f) for f, _ in shape], device=freqs.device)
    ratios = torch.tensor([r for _, r in shape], device=freqs.device)
    position = torch.log(freqs.clamp(min=shape[0][0], max=shape[-1][0]))
    upper = torch.searchsorted(centres, position).clamp(1, len(centres) - 1)
    low, high = centres[upper - 1], centres[upper]
    weight = (position - low) / (high - low)
    ratio = ratios[upper - 1] * (1 - weight) + ratios[upper] * weight
    return t60[:, None] * ratio[None, :]


FRACTIONS = 128  # fractional delays are tabulated in steps of 1/128 sample (1.4 degrees of phase at 8 kHz)


def _fractional_delays(taps: int, device) -> Tensor:
    """(FRACTIONS + 1, taps) Hann-windowed sincs that delay by k / FRACTIONS of a sample; tap j
    is the sample at offset j - taps // 2 + 1 from the whole part of the delay."""
    fraction = torch.arange(FRACTIONS + 1, device=device, dtype=torch.float32) / FRACTIONS
    shift = torch.arange(-taps // 2 + 1, taps // 2 + 1, device=device, dtype=torch.float32)[None] - fraction[:, None]
    return torch.sinc(shift) * 0.5 * (1 + torch.cos(math.pi * shift / (taps / 2)))


def _images(rooms: RoomBatch, window_samples: Tensor, sample_rate: int):
    """Every image source that reaches some mic within ``window_samples`` (B, S) of emission:
    (room, source, positions (K, 3), reflection counts (K,))."""
    size, sources = rooms.size, rooms.sources
    reach = window_samples.max() / sample_rate * SPEED_OF_SOUND + 0.5  # metres, with the array's extent
    orders = [int(torch.ceil(reach / (2 * size[:, axis].min())).item()) + 1 for axis in range(3)]
    axes = []
    for axis in range(3):
        n = torch.arange(-orders[axis], orders[axis] + 1, device=size.device)
        parity = torch.tensor([0, 1], device=size.device)
        n, parity = torch.meshgrid(n, parity, indexing="ij")
        axes.append((n.reshape(-1), parity.reshape(-1)))
    (nx, px), (ny, py), (nz, pz) = axes
    index = torch.cartesian_prod(torch.arange(len(nx), device=size.device), torch.arange(len(ny), device=size.device),
                                 torch.arange(len(nz), device=size.device))
    n = torch.stack([nx[index[:, 0]], ny[index[:, 1]], nz[index[:, 2]]], dim=1).float()  # (I, 3)
    p = torch.stack([px[index[:, 0]], py[index[:, 1]], pz[index[:, 2]]], dim=1).float()
    reflections = ((n - p).abs() + n.abs()).sum(dim=1)  # (I,)
    # image position = (1 - 2p) * source + 2 n L   ->  (B, S, I, 3)
    positions = (1 - 2 * p)[None, None] * sources[:, :, None, :] + 2 * n[None, None] * size[:, None, None, :]
    centre = rooms.mics.mean(dim=1)  # (B, 3)
    spread = (rooms.mics - centre[:, None]).norm(dim=2).max(dim=1).values  # (B,)
    distance = (positions - centre[:, None, None, :]).norm(dim=3)  # (B, S, I)
    limit = window_samples / sample_rate * SPEED_OF_SOUND + spread[:, None] + 0.05
    room, source, image = (distance <= limit[..., None]).nonzero(as_tuple=True)
    return room, source, positions[room, source, image], reflections[image]


def generate(rooms: RoomBatch, generator: torch.Generator | None = None, sample_rate: int = SAMPLE_RATE,
             taps: int = 32, highpass_hz: float = 10.0, tail: bool = True, length: int | None = None,
             t60_shape: tuple[tuple[float, float], ...] = T60_SHAPE) -> Responses:
    """The responses of ``rooms`` (module docstring), on the device of ``rooms``.

    ``generator``: the tail's random numbers (a ``torch.Generator`` on that device), so a call is
    reproducible. ``tail=False``: the images alone (they still fade out by ``CROSSFADE[1]``). ``length``: samples of
    the output (default: the longest room's direct sound + 1.1 × its longest band T60).
    ``t60_shape``: the T60 of each band relative to ``t60`` (``((1000.0, 1.0),)``: one T60 for all)."""
    device = rooms.size.device
    batch, n_sources, n_mics = rooms.sources.shape[0], rooms.sources.shape[1], rooms.mics.shape[1]
    to_mic = (rooms.sources[:, :, None, :] - rooms.mics[:, None, :, :]).norm(dim=3)  # (B, S, M)
    direct = to_mic / SPEED_OF_SOUND * sample_rate
    first = direct.min(dim=2).values  # (B, S): the earliest direct sound of each source
    t60_max = rooms.t60 * max(r for _, r in t60_shape)
    if length is None:
        length = int(torch.ceil(direct.max() + taps + 1.1 * t60_max.max() * sample_rate).item())
        length = -(-length // TAIL_HOP) * TAIL_HOP
    fade_start, fade_end = (first[..., None] + torch.tensor(CROSSFADE, device=device) * sample_rate).unbind(-1)
    window = fade_end + taps

    # early part: images, each a windowed sinc at its fractional delay, crossfaded out by arrival time
    room, source, positions, reflections = _images(rooms, window, sample_rate)
    beta = reflection_for_t60(rooms.size, rooms.t60)
    distance = (positions[:, None, :] - rooms.mics[room]).norm(dim=2)  # (K, M)
    delay = distance / SPEED_OF_SOUND * sample_rate
    gain = beta[room, None] ** reflections[:, None] / (4 * math.pi * distance)
    whole = delay.floor()
    table = _fractional_delays(taps, device)  # (FRACTIONS + 1, T)
    kernel = table[((delay - whole) * FRACTIONS).round().long()]  # (K, M, T)
    offsets = torch.arange(-taps // 2 + 1, taps // 2 + 1, device=device)
    where = whole.long()[..., None] + offsets  # (K, M, T)
    # the images all arrive before ``reach``: render them into that much, then pad
    reach = min(int(where.max()) + 1 if len(where) else 1, length)
    row = (room * n_sources + source)[:, None, None] * n_mics + torch.arange(n_mics, device=device)[None, :, None]
    valid = (where >= 0) & (where < reach)
    flat = torch.zeros(batch * n_sources * n_mics * reach, device=device)
    flat.scatter_add_(0, (row * reach + where.clamp(0, reach - 1)).flatten(), (gain[..., None] * kernel * valid).flatten())
    early = flat.view(batch, n_sources, n_mics, reach)
    # High-pass the images before they fade out: all-positive pulses build a DC pedestal, and a
    # pedestal cut off by the fade would leave the high-pass a slow transient in the late part
    # (measured: +0.6 dB of late energy below 80 Hz, which pyroomacoustics' full-order images lack).
    if highpass_hz:
        early = _highpass(early, highpass_hz, sample_rate)
    rir = torch.nn.functional.pad(early, (0, length - reach))
    samples = torch.arange(length, device=device, dtype=torch.float32)
    phase = ((samples - fade_start[..., None]) / (fade_end - fade_start)[..., None]).clamp(0, 1)  # (B, S, L)
    rir = rir * torch.cos(0.5 * math.pi * phase)[:, :, None, :]
    if tail:
        late = _diffuse_tail(rooms, beta, fade_start, fade_end, length, generator, sample_rate, t60_shape)
        rir = rir + late
    ends = (direct.max(dim=2).values.max(dim=1).values + taps + 1.1 * t60_max * sample_rate).ceil().clamp(max=length)
    return Responses(rir, direct, ends.long())


def _diffuse_tail(rooms: RoomBatch, beta: Tensor, fade_start: Tensor, fade_end: Tensor, length: int,
                  generator: torch.Generator | None, sample_rate: int, t60_shape) -> Tensor:
    """(B, S, M, L) the late part: diffuse-field-coherent noise with a per-bin exponential decay."""
    device = rooms.size.device
    batch, n_sources, n_mics = rooms.sources.shape[0], rooms.sources.shape[1], rooms.mics.shape[1]
    freqs = torch.fft.rfftfreq(TAIL_FFT, 1 / sample_rate).to(device)  # (F,)
    spacing = (rooms.mics[:, :, None, :] - rooms.mics[:, None, :, :]).norm(dim=3)  # (B, M, M)
    coherence = torch.sinc(2 * freqs[None, :, None, None] * spacing[:, None] / SPEED_OF_SOUND)  # (B, F, M, M)
    values, vectors = torch.linalg.eigh(coherence)
    mixing = vectors * values.clamp(min=0).sqrt()[..., None, :]  # Γ = mixing @ mixing^T
    frames = length // TAIL_HOP + 1
    shape = (batch, n_sources, len(freqs), n_mics, frames)
    white = torch.randn(shape, generator=generator, device=device, dtype=torch.complex64)  # E|w|² = 1
    coloured = torch.einsum("bfij,bsfjt->bsfit", mixing.to(white.dtype), white)  # (B, S, F, M, T)
    # the images' energy density, c / (4π V fs) · E(t) per sample (E: ``late_energy``, t from
    # emission); from the crossfade on, each band decays as E^(1 / T60 ratio of the band)
    times = (torch.arange(frames, device=device) * TAIL_HOP)[None, :].float()  # frame centres, samples
    start = fade_start.min(dim=1).values[:, None]  # (B, 1)
    mid = late_energy(rooms.size, beta, torch.minimum(times, start).expand(batch, -1) / sample_rate)  # (B, T)
    later = late_energy(rooms.size, beta, torch.maximum(times, start).expand(batch, -1) / sample_rate)
    ratio = band_t60(torch.ones(batch, device=device), freqs, t60_shape)  # (B, F)
    # ... but never slower than the asked T60 (the mean over directions can weight a shoebox's slow
    # axial paths more than its images do: in a 4 × 3.5 × 2.7 m room at 0.3 s, the measured T60
    # came 1.10x pyroomacoustics' without this bound, 1.08x with it, worst of six tails)
    since = (torch.maximum(times, start) - start) / sample_rate  # (B, T) seconds after the crossfade starts
    fall = torch.minimum(later / mid, torch.exp(-13.8 * since / rooms.t60[:, None]))
    energy = mid[:, None, :] * fall[:, None, :] ** (1 / ratio[..., None])  # (B, F, T)
    volume = rooms.size.prod(dim=1)
    decay = energy.sqrt()
    level = torch.sqrt(SPEED_OF_SOUND / (4 * math.pi * volume * sample_rate))  # (B,)
    window = torch.hann_window(TAIL_FFT, device=device).sqrt()
    # irfft of unit-variance bins has variance 1/n_fft; overlap-add divides by Σ w² = Σw²/hop per sample
    unit = math.sqrt(TAIL_FFT * float(window.square().sum()) / TAIL_HOP)
    spectra = coloured * (decay * level[:, None, None] * unit)[:, None, :, None, :]
    spectra = spectra.permute(0, 1, 3, 2, 4).reshape(batch * n_sources * n_mics, len(freqs), frames)
    noise = torch.istft(spectra, TAIL_FFT, TAIL_HOP, window=window, center=True, length=length)
    noise = noise.view(batch, n_sources, n_mics, length)
    samples = torch.arange(length, device=device, dtype=torch.float32)
    phase = ((samples - fade_start[..., None]) / (fade_end - fade_start)[..., None]).clamp(0, 1)  # (B, S, L)
    return noise * torch.sin(0.5 * math.pi * phase)[:, :, None, :]


def _highpass(rir: Tensor, cutoff: float, sample_rate: int) -> Tensor:
    """A causal 2nd-order Butterworth high-pass along the last axis."""
    omega = math.tan(math.pi * cutoff / sample_rate)
    norm = 1 + math.sqrt(2) * omega + omega**2
    b = torch.tensor([1 / norm, -2 / norm, 1 / norm], device=rir.device)
    a = torch.tensor([1.0, 2 * (omega**2 - 1) / norm, (1 - math.sqrt(2) * omega + omega**2) / norm], device=rir.device)
    flat = rir.reshape(-1, rir.shape[-1])
    return lfilter(flat, a, b, clamp=False).view_as(rir)


def random_rooms(rng: np.random.Generator, count: int, mics: int = 8, sources: int = 4,
                 t60: tuple[float, float] = (0.15, 1.0), distance: tuple[float, float] = (0.5, 3.0),
                 kinds: tuple[str, ...] = ("circular", "linear")) -> RoomBatch:
    """``count`` random rooms (3–10 × 3–8 × 2.5–4 m) with one array of ``mics`` (a geometry of
    ``kinds``, as ``rooms.array_geometry`` draws them) 0.6 m or more from the walls; source 0 (the
    talker) at ``distance`` from the array centre, the others anywhere 0.5 m or more from the walls."""
    from .rooms import array_geometry, _position, _speaker_position

    size, rt, where, arrays = np.empty((count, 3)), np.empty(count), np.empty((count, sources, 3)), np.empty((count, mics, 3))
    for b in range(count):
        room = np.array([rng.uniform(3, 10), rng.uniform(3, 8), rng.uniform(2.5, 4)])
        centre = _position(rng, room, margin=0.6)
        geometry = array_geometry(rng, kinds[int(rng.integers(len(kinds)))], mics)
        size[b], rt[b], arrays[b] = room, rng.uniform(*t60), (centre[:, None] + geometry).T
        where[b, 0] = _speaker_position(rng, room, centre, distance)
        for s in range(1, sources):
            where[b, s] = _position(rng, room)
    return RoomBatch(torch.from_numpy(size), torch.from_numpy(rt), torch.from_numpy(where), torch.from_numpy(arrays))
