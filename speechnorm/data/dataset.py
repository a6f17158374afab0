"""Simulated multi-channel mixtures, drawn on the fly from a seeded RNG.

Item i of a split is a pure function of (seed, split, i): the same every epoch and on every
worker. Its conditions (noise kind, T60, SNR, mic count: ``plan``) are drawn first, from their own
stream, so evaluation can group items by condition without simulating them. Items come in blocks
of ``mic_block`` that share a mic count, so a batch stacks (evaluation splits use blocks of 1: their
items do not depend on the training batch size); the ``BlockBatchSampler`` shuffles whole blocks. With ``cache_dir`` set, each simulated item is
kept on disk and reused in later epochs (it is the same item either way).

With ``personalize`` (``Personalization``) an item is (noisy, target, embedding): the target
speaker's embedding from a *different* utterance of the same speaker (``enrollment``), and 0-2
competing talkers of other speakers, each from its own position, at a drawn signal-to-interference
ratio, on top of the noise. The plan then also holds ``interferers`` and ``sir_db``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from .corpus import Corpus
from .enrollment import EmbeddingCache
from .resample import played_faster
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


@dataclass(frozen=True)
class Personalization:
    """Items for personalized models (module docstring).

    interferers: the range of competing talkers per item (drawn uniformly, inclusive).
    sir_db: each talker's level below the reverberant target at mic 0, dB (negative: louder).
    embeddings_dir: where utterance embeddings are cached (None: memory only).
    not_targets: speaker labels (shell patterns) that name a group of several voices, such as
        fillets' side characters or the bundled two-person conversation. Their utterances stay
        as competing talkers and babble, but never as a target: "another utterance of the same
        speaker" could be another voice, an enrollment that does not match its target.
    voice_speeds: (low, high) speed factors that make more voices of the training speakers
        (pseudo-speakers). A training item's target *and its enrollment* are resampled by one
        factor drawn from this range (speed perturbation moves pitch and formants together; on
        three training voices the encoder's similarity to the voice's own embedding fell from
        0.83-0.93 at speed 1 to 0.68-0.79 at 0.85 or 1.15, where another speaker scored 0.60),
        and each competing talker by a factor of its own. Only the ``train`` split: validation
        and test clips stay the same clips. None: every voice as recorded.
    """

    interferers: tuple[int, int] = (0, 2)
    sir_db: tuple[float, float] = (-5.0, 10.0)
    embeddings_dir: str | None = None
    not_targets: tuple[str, ...] = ("*:side_characters", "assets:conversation")
    voice_speeds: tuple[float, float] | None = None

    def __post_init__(self):
        low, high = self.interferers
        if not 0 <= low <= high <= 4:
            raise ValueError(f"interferers must be a range within [0, 4], got {self.interferers}")
        if not self.sir_db[0] <= self.sir_db[1]:
            raise ValueError(f"sir_db must be (low, high), got {self.sir_db}")
        if self.voice_speeds is not None:
            try:
                speeds = tuple(float(v) for v in self.voice_speeds)
            except (TypeError, ValueError):
                speeds = ()
            if not (len(speeds) == 2 and 0.5 <= speeds[0] <= speeds[1] <= 2.0):
                raise ValueError(f"voice_speeds must be (low, high) speed factors within [0.5, 2.0], got {self.voice_speeds!r}")
            object.__setattr__(self, "voice_speeds", speeds)


class SimulatedMixtures(Dataset):
    """(noisy (M, N), target (N,)) pairs for one split; with ``personalize``, (noisy, target,
    embedding (D,)) triples."""

    def __init__(
        self, corpus: Corpus, split: str, size: int, seconds: float = 2.0, seed: int = 0, mic_block: int = 8,
        spec: MixSpec = MixSpec(), cache_dir: str | Path | None = None, hop: int = 160, measured_fraction: float = 0.5,
        personalize: Personalization | None = None, talker_corpus: Corpus | None = None,
    ):
        self.corpus, self.split, self.size, self.seed, self.mic_block, self.spec = corpus, split, size, seed, mic_block, spec
        self.personalize = personalize
        # competing talkers come from this split's other speakers; a split of one speaker (e.g. a
        # validation voice) borrows them from ``talker_corpus`` (the datamodule gives train's)
        self.talker_corpus = talker_corpus
        self.embeddings = EmbeddingCache(personalize.embeddings_dir) if personalize else None
        # pseudo-speakers (``Personalization.voice_speeds``) on the training split only
        self._speeds = personalize.voice_speeds if personalize is not None and split == "train" else None
        self.samples = int(seconds * corpus.sample_rate) // hop * hop
        self.unseen = split == "test_unseen"
        # Measured rooms keep their real arrays, so they stay out of the held-out-geometry split.
        self.measured_fraction = 0.0 if self.unseen else measured_fraction
        # The cache key covers everything an item depends on, so a changed corpus or setting never
        # reads stale items.
        recipe = repr((self.spec, measured_fraction, corpus.clean, corpus.noise, corpus.rooms, mic_block))
        if personalize is not None:  # (left out otherwise: the items of plain recipes keep their cache)
            recipe += repr((personalize.interferers, personalize.sir_db))
            excluded = sorted({who for who in map(corpus.speaker, corpus.clean) if self._not_target(who)})
            if excluded:  # (only where a target could have been one: other splits keep their cache)
                recipe += repr(("not targets", excluded))
            if self._speeds is not None:
                recipe += repr(("voice speeds", self._speeds))
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
        plan = {"noise": kind, "sources": sources, "t60": float(rng.uniform(*self.spec.t60)),
                "snr_db": float(rng.uniform(low, high)), "mics": self.mics(index)}
        if self.personalize is not None:  # its own stream: the plain conditions above are unchanged
            talkers = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 3])
            plan["interferers"] = int(talkers.integers(self.personalize.interferers[0], self.personalize.interferers[1] + 1))
            plan["sir_db"] = float(talkers.uniform(*self.personalize.sir_db))
        return plan

    def _talkers(self, speaker: str) -> tuple[list[Path], Corpus]:
        """Utterances of speakers other than ``speaker`` (never the target's own voice), and their corpus."""
        for corpus in (self.corpus, self.talker_corpus):
            if corpus is not None:
                voices = [p for p in corpus.other_voices(speaker) if corpus.speaker(p) != speaker]
                if voices:
                    return voices, corpus
        raise ValueError(f"split {self.split!r} has no speaker but {speaker!r} to be a competing talker, and no other "
                         "corpus to borrow talkers from")

    def _not_target(self, speaker: str) -> bool:
        return any(fnmatch.fnmatchcase(speaker, pattern) for pattern in self.personalize.not_targets)

    def _speed(self, rng: np.random.Generator | None) -> float:
        """A voice's speed factor: 1 without ``voice_speeds`` (and then ``rng`` is not drawn from)."""
        return 1.0 if self._speeds is None or rng is None else float(rng.uniform(*self._speeds))

    def _voiced(self, audio: Tensor, speed: float) -> Tensor:
        """``audio`` played ``speed`` times as fast: pitch and formants scale with it."""
        if speed == 1.0:
            return audio
        return torch.from_numpy(played_faster(audio[None].numpy(), self.corpus.sample_rate, speed)[0])

    def _enrolled_target(self, rng: np.random.Generator, speed: float = 1.0) -> tuple[Tensor, Path, np.ndarray]:
        """A target utterance whose speaker has another utterance that enrolls, and that one's
        embedding (both at ``speed``); never a speaker of ``Personalization.not_targets``."""
        for _ in range(50):
            clean, path = self.corpus.load("clean", int(rng.integers(1 << 30)), with_path=True)
            if self._not_target(self.corpus.speaker(path)):
                continue
            others = [p for p in self.corpus.voice_files(self.corpus.speaker(path)) if p != path]
            for pick in rng.permutation(len(others))[:8]:
                embedding = self.embeddings.get(others[pick], speed=speed)
                if embedding is not None:
                    return self._voiced(clean, speed), path, embedding
        raise ValueError(f"personalized items of split {self.split!r} need speakers with two or more utterances of "
                         "2 s of speech or more, not excluded as targets; this corpus has too few (check its speaker labels "
                         f"and not_targets {list(self.personalize.not_targets)})")

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
        voices_rng = None
        if self.personalize is None:
            clean, path = self.corpus.load("clean", int(rng.integers(1 << 30)), with_path=True)
            embedding = None
        else:
            # the voices' speed factors have their own stream: without voice_speeds nothing changes
            voices_rng = None if self._speeds is None else np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, 4])
            clean, path, embedding = self._enrolled_target(rng, self._speed(voices_rng))
        speaker = self.corpus.speaker(path)
        speech = fit_length(clean, self.samples, rng, tile=False)
        noises = self._noises(rng, plan, speaker)
        talkers = []
        if plan.get("interferers", 0):
            voices, corpus = self._talkers(speaker)
            talkers = [fit_length(self._voiced(corpus.load("clean", int(rng.integers(1 << 30)), files=voices),
                                              self._speed(voices_rng)), self.samples, rng, tile=True)
                       for _ in range(plan["interferers"])]
        sir = {"interferers": talkers, "sir_db": plan.get("sir_db")}
        mics = plan["mics"]
        rooms = [folder for folder, channels in self.corpus.rooms if channels >= mics]
        if rooms and rng.random() < self.measured_fraction:
            folder = rooms[int(rng.integers(len(rooms)))]
            positions = rng.permutation(1 << 10)[: 1 + len(noises) + len(talkers)].tolist()  # distinct source positions
            target_rir, *other_rirs = self.corpus.load_rirs(folder, positions, mics)
            noisy, target = mix(rng, speech, noises, target_rir, other_rirs[: len(noises)], self.spec, snr_db=plan["snr_db"],
                                interferer_rirs=other_rirs[len(noises) :], **sir)
        else:
            _, geometry = sample_array(rng, self.unseen, mics)
            noisy, target = simulate(rng, speech, noises, geometry, self.spec, t60=plan["t60"], snr_db=plan["snr_db"], **sir)
        item = (noisy.float().contiguous(), target.float().contiguous())
        if embedding is not None:
            item += (torch.from_numpy(np.asarray(embedding, np.float32)),)
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
