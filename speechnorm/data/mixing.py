"""Training items mixed on the fly from a room bank: speech crop × bank room × noise × SNR.

One code path for a CPU DataLoader and a batched GPU loop:
1. ``draw_plans`` (numpy, per item: a pure function of (seed, index)) picks a bank room and a
   random subset and order of its mics, a speech crop, noise sources (recorded or generated noise,
   babble of 3-8 other talkers, or one competing talker), the SNR, sensor noise, mic gains and level.
2. ``mix`` (torch, on the device of the pools and the bank) gathers the crops, convolves them with
   the rooms' responses by FFT in one batched call (circularly over the item: a crop is one period
   of a periodic signal), and sets the levels. The target is the speech
   through the direct sound + first 50 ms at the reference mic (the first chosen one).

``BankMixtures`` is the Dataset over these (``__getitems__`` mixes a whole batch at once); the
recipes' validation and test clips stay ``dataset.SimulatedMixtures``, functions of seed and split,
so numbers stay comparable with earlier models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .bank import RoomBank
from .pool import SignalPool
from .roomgen import EARLY_WINDOW, SAMPLE_RATE

MAX_CROPS = 8  # noise crops per item (babble: up to 8 talkers over the bank's noise positions)
BANK_SPLIT_ID = 9  # the RNG stream of bank items (apart from dataset.SPLIT_IDS)


@dataclass(frozen=True)
class BankMixSpec:
    """The random ranges of a bank item (as ``rooms.MixSpec``; the room comes from the bank)."""

    seconds: float = 3.0
    mics: tuple[int, int] = (2, 6)
    snr_db: tuple[float, float] = (-5.0, 15.0)
    noise_sources: tuple[int, int] = (1, 3)
    noise_kinds: tuple[tuple[str, float], ...] = (("recorded", 0.3), ("generated", 0.15), ("babble", 0.3), ("talker", 0.25))
    talker_snr_floor_db: float = 0.0
    mic_gain_db: float = 2.0
    sensor_snr_db: tuple[float, float] | None = (40.0, 70.0)

    def __post_init__(self):
        known = {"recorded", "generated", "noise", "babble", "talker"}
        unknown = {k for k, _ in self.noise_kinds} - known
        if unknown:
            raise ValueError(f"noise kinds must be among {sorted(known)}, got {sorted(unknown)}")
        if not 1 <= self.noise_sources[0] <= self.noise_sources[1]:
            raise ValueError(f"noise_sources must be (low, high) with 1 <= low <= high, got {self.noise_sources}")
        if not 1 <= self.mics[0] <= self.mics[1]:
            raise ValueError(f"mics must be (low, high) with 1 <= low <= high, got {self.mics}")


@dataclass
class Plans:
    """A batch of drawn items (arrays of B rows); ``crops``/``positions`` are (B, MAX_CROPS), -1 unused."""

    rooms: np.ndarray
    mics: np.ndarray  # (B, M) mic indices into each bank room
    speech: np.ndarray  # speech file per item
    speech_offset: np.ndarray  # where the crop starts in the file (negative: the file starts that late)
    crop_files: np.ndarray  # (B, MAX_CROPS) noise or speech file per crop, -1 unused
    crop_offsets: np.ndarray
    crop_is_speech: np.ndarray  # (B,) bool: the crops are talkers (babble, talker), else noise files
    positions: np.ndarray  # (B, MAX_CROPS) the bank source (1..S-1) each crop plays from
    snr_db: np.ndarray
    sensor_snr_db: np.ndarray  # (B,) nan: none
    gains: np.ndarray  # (B, M) linear
    level: np.ndarray  # (B,) the mixture's peak
    noise_seed: np.ndarray  # (B,) seeds of the sensor noise
    kinds: list[str]


def block_mics(seed: int, block: int, spec: BankMixSpec) -> int:
    """The mic count of a block of items (a batch shares one)."""
    return int(np.random.default_rng([seed, BANK_SPLIT_ID, block, 0]).integers(spec.mics[0], spec.mics[1] + 1))


def draw_plans(indices: list[int], seed: int, mic_block: int, spec: BankMixSpec, bank: RoomBank,
               speech: SignalPool, noise: SignalPool) -> Plans:
    """The plans of items ``indices`` (one mic count: the block of the first)."""
    samples = int(spec.seconds * SAMPLE_RATE)
    mics = block_mics(seed, indices[0] // mic_block, spec)
    if mics > bank.settings.mics:
        raise ValueError(f"items of {mics} mics need a bank of {mics} mics or more; {bank.folder} has {bank.settings.mics}")
    sources = bank.settings.sources
    if sources < 2:
        raise ValueError(f"{bank.folder} has {sources} source position per room; mixing needs the talker and a noise position")
    kinds, weights = zip(*spec.noise_kinds)
    weights = np.asarray(weights, float) / sum(weights)
    by_kind = {"recorded": noise.with_label("recorded"), "generated": noise.with_label("generated"),
               "noise": np.arange(len(noise))}
    rows = []
    for index in indices:
        rng = np.random.default_rng([seed, BANK_SPLIT_ID, index, 1])
        kind = str(rng.choice(kinds, p=weights))
        files = by_kind.get(kind)
        if files is not None and len(files) == 0:  # a pool without this kind of noise: any noise
            files = by_kind["noise"]
        talker = int(rng.integers(len(speech)))
        length = int(speech.lengths[talker])
        offset = int(rng.integers(0, length - samples + 1)) if length >= samples else -int(rng.integers(0, samples - length + 1))
        crop_files, crop_offsets, positions = np.full(MAX_CROPS, -1), np.zeros(MAX_CROPS, np.int64), np.full(MAX_CROPS, -1)
        if kind in ("babble", "talker"):
            count = int(rng.integers(3, 9)) if kind == "babble" else 1
            others = _other_talkers(rng, speech, speech.labels[talker], count)
            for k, other in enumerate(others):
                crop_files[k], crop_offsets[k] = other, int(rng.integers(int(speech.lengths[other])))
                positions[k] = 1 + k % (sources - 1)
        else:
            count = int(rng.integers(spec.noise_sources[0], spec.noise_sources[1] + 1))
            for k in range(count):
                pick = int(files[int(rng.integers(len(files)))])
                crop_files[k], crop_offsets[k] = pick, int(rng.integers(int(noise.lengths[pick])))
                positions[k] = 1 + k % (sources - 1)
        low, high = spec.snr_db
        if kind == "talker":
            low, high = max(low, spec.talker_snr_floor_db), max(high, spec.talker_snr_floor_db)
        rows.append(dict(
            room=int(rng.integers(len(bank))), mics=rng.permutation(bank.settings.mics)[:mics], speech=talker,
            offset=offset, crop_files=crop_files, crop_offsets=crop_offsets, positions=positions,
            is_speech=kind in ("babble", "talker"), snr=float(rng.uniform(low, high)),
            sensor=float(rng.uniform(*spec.sensor_snr_db)) if spec.sensor_snr_db else float("nan"),
            gains=10 ** (rng.uniform(-spec.mic_gain_db, spec.mic_gain_db, mics) / 20) if spec.mic_gain_db else np.ones(mics),
            level=float(rng.uniform(0.3, 0.9)), noise_seed=int(rng.integers(1 << 62)), kind=kind))
    column = lambda key, dtype=None: np.array([r[key] for r in rows], dtype=dtype)
    return Plans(column("room"), np.stack([r["mics"] for r in rows]), column("speech"), column("offset"),
                 np.stack([r["crop_files"] for r in rows]), np.stack([r["crop_offsets"] for r in rows]),
                 column("is_speech", bool), np.stack([r["positions"] for r in rows]), column("snr", np.float32),
                 column("sensor", np.float32), np.stack([r["gains"] for r in rows]).astype(np.float32),
                 column("level", np.float32), column("noise_seed"), [r["kind"] for r in rows])


def _other_talkers(rng: np.random.Generator, speech: SignalPool, speaker: str, count: int) -> list[int]:
    """``count`` utterances of speakers other than ``speaker`` (any speaker if the pool has one only)."""
    picks = []
    for _ in range(count):
        for _attempt in range(20):
            pick = int(rng.integers(len(speech)))
            if speech.labels[pick] != speaker:
                break
        picks.append(pick)
    return picks


def mix(plans: Plans, speech: SignalPool, noise: SignalPool, bank: RoomBank, seconds: float) -> tuple[Tensor, Tensor]:
    """noisy (B, M, N) and target (B, N) of ``plans``, on the device of the pools and the bank."""
    device = speech.audio.device
    samples = int(seconds * SAMPLE_RATE)
    batch = len(plans.rooms)
    clean = speech.crops(torch.from_numpy(plans.speech), torch.from_numpy(plans.speech_offset), samples, tile=False)
    rooms = torch.from_numpy(plans.rooms)
    # each room cut at its own useful length (so an item is the same alone or in any batch)
    own = bank.useful_lengths(rooms).to(device)  # (B,)
    rir = bank.fetch(rooms, torch.from_numpy(plans.mics), length=int(own.max())).to(device)  # (B, S, M, L)
    rir = rir * (torch.arange(rir.shape[-1], device=device) < own[:, None, None, None])
    direct = bank.direct[rooms.to(bank.direct.device)].to(device)  # (B, S, M_bank)
    reference = torch.from_numpy(plans.mics[:, 0]).to(device)
    # noise crops, each at unit power, summed per (item, source position) actually used
    used = plans.crop_files >= 0  # (B, MAX_CROPS)
    item, slot = np.nonzero(used)
    crops = torch.zeros(len(item), samples, device=device)
    for pool, chosen in ((speech, plans.crop_is_speech[item]), (noise, ~plans.crop_is_speech[item])):
        if chosen.any():
            rows = np.flatnonzero(chosen)
            crops[torch.from_numpy(rows).to(device)] = pool.crops(
                torch.from_numpy(plans.crop_files[item[rows], slot[rows]]),
                torch.from_numpy(plans.crop_offsets[item[rows], slot[rows]]), samples, tile=True)
    crops = crops / crops.square().mean(dim=1, keepdim=True).sqrt().clamp(min=1e-8)
    pairs, pair_of_crop = np.unique(item * rir.shape[1] + plans.positions[item, slot], return_inverse=True)
    pair_item, pair_position = pairs // rir.shape[1], pairs % rir.shape[1]  # (K,) items and their positions
    sources = torch.zeros(len(pairs), samples, device=device)
    sources.index_add_(0, torch.from_numpy(pair_of_crop.reshape(-1)).to(device), crops)

    # Every convolution is circular over the item's N samples: the crop is taken as one period of a
    # periodic signal, so its steady-state response has no build-up from silence at the start (the
    # tail of the crop's end stands in for the reverberation of what preceded it), and every FFT is N
    # long (a 3 s item: 48,000 = 2^7 3 5^3 points) instead of N + the response length.
    folded = _fold(rir, samples)  # (B, S, M, N)
    speech_f = torch.fft.rfft(clean)  # (B, F)
    reverberant = torch.fft.irfft(speech_f[:, None] * torch.fft.rfft(folded[:, 0]), n=samples)  # (B, M, N)
    pair_item_t = torch.from_numpy(pair_item).to(device)
    # The noise crops are tiled (periodic) signals: their steady-state response is the circular
    # convolution over one period, N samples (shorter FFTs, and no build-up from silence at the start).
    noise_f = torch.fft.rfft(sources)[:, None] * torch.fft.rfft(
        folded[pair_item_t, torch.from_numpy(pair_position).to(device)])  # (K, M, F)
    # sum each item's positions: an item has at most one pair per position, so add position by position
    per_item = None
    for position in np.unique(pair_position):
        chosen = np.flatnonzero(pair_position == position)
        if per_item is None and len(chosen) == batch:
            per_item = noise_f[torch.from_numpy(chosen).to(device)]
            continue
        if per_item is None:
            per_item = torch.zeros(batch, *noise_f.shape[1:], dtype=noise_f.dtype, device=device)
        per_item[torch.from_numpy(pair_item[chosen]).to(device)] += noise_f[torch.from_numpy(chosen).to(device)]
    noise_mix = torch.fft.irfft(per_item, n=samples)  # (B, M, N)
    early_end = direct[torch.arange(batch, device=device), 0, reference].floor() + round(EARLY_WINDOW * SAMPLE_RATE)
    early = rir[:, 0, 0] * (torch.arange(rir.shape[-1], device=device)[None] < early_end[:, None])
    target = torch.fft.irfft(speech_f * torch.fft.rfft(_fold(early, samples)), n=samples)  # (B, N)

    power = reverberant[:, 0].square().mean(dim=1)  # (B,) at the reference mic
    snr = torch.from_numpy(plans.snr_db).to(device)
    gain = torch.sqrt(power / (noise_mix[:, 0].square().mean(dim=1) * 10 ** (snr / 10)).clamp(min=1e-20))
    noisy = reverberant + gain[:, None, None] * noise_mix
    sensor = torch.from_numpy(plans.sensor_snr_db).to(device)
    if torch.isfinite(sensor).any():  # white noise per mic: crops of one fixed table at drawn offsets
        table = _white(device)
        starts = np.stack([np.random.default_rng(int(s)).integers(0, len(table) - samples, noisy.shape[1])
                           for s in plans.noise_seed])  # (B, M)
        if device.type == "cpu":  # a copy per mic is fastest there; one gather on a GPU
            white = torch.stack([table[int(start) : int(start) + samples] for start in starts.flat]).view_as(noisy)
        else:
            white = table[torch.from_numpy(starts).to(device)[..., None] + torch.arange(samples, device=device)]
        level = torch.where(torch.isfinite(sensor), torch.sqrt(power / 10 ** (sensor.nan_to_num(0.0) / 10)), 0.0)
        noisy = noisy + level[:, None, None] * white
    gains = torch.from_numpy(plans.gains).to(device)
    noisy, target = noisy * gains[..., None], target * gains[:, :1]
    peak = torch.maximum(noisy.abs().amax(dim=(1, 2)), target.abs().amax(dim=1)).clamp(min=1e-9)
    scale = torch.from_numpy(plans.level).to(device) / peak
    return noisy * scale[:, None, None], target * scale[:, None]


def _fold(response: Tensor, samples: int) -> Tensor:
    """``response`` (..., L) wrapped onto one period of ``samples`` (..., N): the circular equivalent."""
    if response.shape[-1] <= samples:
        return torch.nn.functional.pad(response, (0, samples - response.shape[-1]))
    padded = torch.nn.functional.pad(response, (0, -response.shape[-1] % samples))
    return padded.view(*response.shape[:-1], -1, samples).sum(dim=-2)


_WHITE: dict[str, Tensor] = {}


def _white(device) -> Tensor:
    """2^20 samples (65 s) of unit white noise, the same on every device; sensor noise is cut from it."""
    key = str(device)
    if key not in _WHITE:
        _WHITE[key] = torch.randn(1 << 20, generator=torch.Generator().manual_seed(20261207)).to(device)
    return _WHITE[key]


class BankMixtures(Dataset):
    """Training items (noisy (M, N), target (N,)) mixed from ``bank`` and the pools; item i is a
    pure function of (seed, i). Items come in blocks of ``mic_block`` that share a mic count
    (``dataset.BlockBatchSampler``); ``__getitems__`` mixes a batch in one call."""

    def __init__(self, bank: RoomBank, speech: SignalPool, noise: SignalPool, size: int, seed: int = 0,
                 mic_block: int = 8, spec: BankMixSpec = BankMixSpec()):
        if len(bank) == 0:
            raise ValueError(f"the room bank {bank.folder} is empty")
        self.bank, self.speech, self.noise, self.size, self.seed = bank, speech, noise, size, seed
        self.mic_block, self.spec = mic_block, spec

    def __len__(self) -> int:
        return self.size

    def plans(self, indices: list[int]) -> Plans:
        return draw_plans(indices, self.seed, self.mic_block, self.spec, self.bank, self.speech, self.noise)

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        if any(not 0 <= i < self.size for i in indices):
            raise IndexError(f"indices must be within [0, {self.size}), got {min(indices)}..{max(indices)}")
        blocks = {i // self.mic_block for i in indices}
        if len(blocks) > 1:  # each block has its own mic count
            return [item for block in sorted(blocks) for item in
                    self.__getitems__([i for i in indices if i // self.mic_block == block])]
        noisy, target = mix(self.plans(indices), self.speech, self.noise, self.bank, self.spec.seconds)
        return list(zip(noisy.cpu(), target.cpu()))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.__getitems__([index])[0]
