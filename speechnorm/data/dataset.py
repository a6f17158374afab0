"""Simulated multi-channel mixtures, drawn on the fly from a seeded RNG.

Item i of a split is a pure function of (seed, split, i): the same every epoch and on every
worker. Its conditions (noise kind, T60, SNR, mic count: ``plan``) are drawn first, from their own
stream, so evaluation can group items by condition without simulating them. Items come in blocks
of ``mic_block`` that share a mic count, so a batch stacks (evaluation splits use blocks of 1: their
items do not depend on the training batch size); the ``BlockBatchSampler`` shuffles whole blocks. With ``cache_dir`` set, each simulated item is
kept on disk and reused in later epochs (it is the same item either way).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .corpus import Corpus
from .rooms import MixSpec, mix, sample_array, sample_mics, simulate

SPLIT_IDS = {"train": 1, "val": 2, "test": 3, "test_unseen": 4}


def fit_length(signal: Tensor, samples: int, rng: np.random.Generator, tile: bool) -> Tensor:
    """Crop a random stretch, or place a short signal at a random offset (tiled for noise)."""
    if signal.numel() >= samples:
        start = int(rng.integers(0, signal.numel() - samples + 1))
        return signal[start : start + samples]
    if tile:
        return signal.repeat(samples // signal.numel() + 1)[:samples]
    out = torch.zeros(samples)
    start = int(rng.integers(0, samples - signal.numel() + 1))
    out[start : start + signal.numel()] = signal
    return out


class SimulatedMixtures(Dataset):
    """(noisy (M, N), target (N,)) pairs for one split."""

    def __init__(
        self, corpus: Corpus, split: str, size: int, seconds: float = 2.0, seed: int = 0, mic_block: int = 8,
        spec: MixSpec = MixSpec(), cache_dir: str | Path | None = None, hop: int = 160, measured_fraction: float = 0.5,
    ):
        self.corpus, self.split, self.size, self.seed, self.mic_block, self.spec = corpus, split, size, seed, mic_block, spec
        self.samples = int(seconds * corpus.sample_rate) // hop * hop
        self.unseen = split == "test_unseen"
        # Measured rooms keep their real arrays, so they stay out of the held-out-geometry split.
        self.measured_fraction = 0.0 if self.unseen else measured_fraction
        # The cache key covers everything an item depends on, so a changed corpus or setting never
        # reads stale items.
        recipe = repr((self.spec, measured_fraction, corpus.clean, corpus.noise, corpus.rooms, mic_block))
        digest = hashlib.sha1(recipe.encode()).hexdigest()[:10]
        self.cache = Path(cache_dir) / f"{split}-seed{seed}-n{self.samples}-{digest}" if cache_dir else None

    def __len__(self) -> int:
        return self.size

    def mics(self, index: int) -> int:
        block_rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index // self.mic_block, 0])
        return sample_mics(block_rng, self.unseen)

    def plan(self, index: int) -> dict:
        """The conditions of item ``index``: noise kind, number of noise sources, T60, SNR, mics."""
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 2])
        kinds, weights = zip(*self.spec.noise_kinds)
        kind = str(rng.choice(kinds, p=np.asarray(weights) / sum(weights)))
        low, high = self.spec.snr_db
        if kind == "talker":
            low, high = max(low, self.spec.talker_snr_floor_db), max(high, self.spec.talker_snr_floor_db)
        sources = {"babble": int(rng.integers(3, 9)), "talker": 1}.get(
            kind, int(rng.integers(self.spec.noise_sources[0], self.spec.noise_sources[1] + 1)))
        return {"noise": kind, "sources": sources, "t60": float(rng.uniform(*self.spec.t60)),
                "snr_db": float(rng.uniform(low, high)), "mics": self.mics(index)}

    def _noises(self, rng: np.random.Generator, plan: dict, speaker: str) -> list[Tensor]:
        kind = plan["noise"]
        if kind in ("babble", "talker"):  # other voices of this split, never the target's own
            others = self.corpus.other_voices(speaker)
            return [fit_length(self.corpus.load("clean", int(rng.integers(1 << 30)), files=others), self.samples, rng,
                               tile=True) for _ in range(plan["sources"])]
        return [fit_length(self.corpus.load(kind, int(rng.integers(1 << 30))), self.samples, rng, tile=True)
                for _ in range(plan["sources"])]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        cached = self.cache / f"{index:06d}.pt" if self.cache else None
        if cached is not None and cached.exists():
            return tuple(torch.load(cached))
        plan = self.plan(index)
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 1])
        clean, path = self.corpus.load("clean", int(rng.integers(1 << 30)), with_path=True)
        speech = fit_length(clean, self.samples, rng, tile=False)
        noises = self._noises(rng, plan, self.corpus.speaker(path))
        mics = plan["mics"]
        rooms = [folder for folder, channels in self.corpus.rooms if channels >= mics]
        if rooms and rng.random() < self.measured_fraction:
            folder = rooms[int(rng.integers(len(rooms)))]
            positions = rng.permutation(1 << 10)[: 1 + len(noises)].tolist()  # distinct source positions
            target_rir, *noise_rirs = self.corpus.load_rirs(folder, positions, mics)
            noisy, target = mix(rng, speech, noises, target_rir, noise_rirs, self.spec, snr_db=plan["snr_db"])
        else:
            _, geometry = sample_array(rng, self.unseen, mics)
            noisy, target = simulate(rng, speech, noises, geometry, self.spec, t60=plan["t60"], snr_db=plan["snr_db"])
        item = (noisy.float().contiguous(), target.float().contiguous())
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as tmp:
                torch.save(item, tmp.name)
            os.replace(tmp.name, cached)  # atomic: workers never read half a file
        return item


class BlockBatchSampler(Sampler[list[int]]):
    """Batches that are whole blocks of consecutive indices (one mic count each), block order
    shuffled per epoch when ``shuffle``; under DDP each process takes every world-th block, the
    list padded by repetition so that every process runs the same number of batches.

    ``skip_next``: batches of the next epoch's order to leave out once, so that a run resumed
    from a mid-epoch checkpoint continues the epoch where it stopped (``__len__`` stays the full
    epoch, which is what the trainer's restored batch counter expects)."""

    def __init__(self, size: int, block: int, shuffle: bool, seed: int = 0):
        self.size, self.block, self.shuffle, self.seed, self.epoch = size, block, shuffle, seed, 0
        self.skip_next = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _blocks(self) -> list[int]:
        blocks = list(range((self.size + self.block - 1) // self.block))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(blocks)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            blocks += blocks[: (-len(blocks)) % world]  # every process gets as many batches (repeats a few)
            blocks = blocks[torch.distributed.get_rank() :: world]
        return blocks

    def __iter__(self):
        skip, self.skip_next = self.skip_next, 0
        for b in self._blocks()[skip:]:
            yield list(range(b * self.block, min((b + 1) * self.block, self.size)))

    def __len__(self) -> int:
        return len(self._blocks())
