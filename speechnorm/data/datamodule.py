"""The LightningDataModule of the recipes: train / val / test / test_unseen (held-out arrays)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from . import synthetic
from .corpus import Corpus
from .dataset import BlockBatchSampler, Personalization, SimulatedMixtures
from .rooms import MixSpec


class EnhancementDataModule(L.LightningDataModule):
    """Simulated multi-channel mixtures from a corpus on disk or the built-in synthetic one.

    Args:
        clean_dir, noise_dir: folders of clean speech and of noise (.wav/.flac, recursive). Leave
            both unset to build and use the built-in corpus in ``synthetic_dir``: espeak-ng speech,
            plus real recorded speech unless ``real_speech`` is off (``speechnorm.data.synthetic``).
        train_items, val_items, test_items: items per split (test_unseen has ``test_items``).
        seconds: length of an item. batch_size: items per batch (1 is fine for Online Norm).
        snr_db, t60: the ranges mixtures are drawn from. seed: fixes every item of every split
            (val and test items depend on the seed and split only, never on ``batch_size``).
        distance, late_reverb, mic_gain_db, sensor_snr_db, noise_kinds, talker_snr_floor_db: the
            room and noise settings of ``rooms.MixSpec`` (defaults: the original order-capped rooms).
        cache_dir: keep simulated items on disk and reuse them (optional).
        rir_dir: measured multi-channel RIRs (optional): one sub-folder per room and array, one
            file per source position (channels = mics). ``measured_fraction`` of the items of the
            seen-array splits then use them instead of a simulated room.
        personalize: items for personalized models (``dataset.Personalization``): {"interferers":
            [0, 2], "sir_db": [-5, 10], "embeddings_dir": ".cache/embeddings"}; each item then also
            holds the target speaker's embedding, from another utterance of that speaker.
        speech_screen: train on the utterances ``speechnorm screen`` kept (DNSMOS, noise floor,
            clipping, bandwidth: ``speechnorm.data.screen``); validation and test are not screened.
        test_min_dry_ovrl: test splits of clean targets only: utterances whose dry DNSMOS OVRL
            (``speechnorm screen``) is at least this (the clean-target evaluation set: 2.8).
        room_bank: a bank of generated rooms (``speechnorm bank``): training items are then mixed on
            the fly from it (``mixing.BankMixtures``: a bank room with a random subset and order of
            its mics, speech crop, noise, SNR), ~25x faster than simulating each room. Validation
            and test clips stay simulated per item, as without it, so numbers stay comparable.
            ``train_mics`` is the range of mic counts of its items; ``noise_kinds`` as for the
            simulated items.
        speech_quality_floor: screen the *training* speech by DNSMOS, e.g. {"dnsmos_bak": 3.0}:
            utterances scored below a floor (``scripts/corpus_quality.py --all``) are left out, so
            the model never learns to keep a recording's own background. Validation and test
            clips are not screened: they stay the same clips, comparable across models.
    """

    def __init__(
        self, clean_dir: str | None = None, noise_dir: str | None = None,
        synthetic_dir: str = ".cache/synthetic_corpus", synthetic_utterances: int = 120, real_speech: bool = True,
        train_items: int = 2000, val_items: int = 64, test_items: int = 64, seconds: float = 2.0,
        batch_size: int = 8, num_workers: int = 0, seed: int = 0,
        snr_db: tuple[float, float] = (-5.0, 15.0), t60: tuple[float, float] = (0.15, 0.7),
        cache_dir: str | None = None, rir_dir: str | None = None, measured_fraction: float = 0.5,
        distance: tuple[float, float] | None = None, late_reverb: bool = False, mic_gain_db: float = 0.0,
        sensor_snr_db: tuple[float, float] | None = None, noise_kinds: dict[str, float] | None = None,
        talker_snr_floor_db: float = 0.0, test_t60: tuple[float, float] | None = None,
        test_snr_db: tuple[float, float] | None = None, personalize: dict | None = None,
        speech_quality_floor: dict[str, float] | None = None, speech_screen: bool = False, room_bank: str | None = None,
        test_min_dry_ovrl: float | None = None,
        train_mics: tuple[int, int] = (2, 6),
    ):
        super().__init__()
        self.save_hyperparameters()
        if (clean_dir is None) != (noise_dir is None):
            raise ValueError("give both clean_dir and noise_dir, or neither (for the synthetic corpus)")
        try:
            self.personalization = None if personalize is None else Personalization(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in personalize.items()})
        except TypeError as err:
            raise ValueError(f"personalize: {err} (keys: interferers, sir_db, embeddings_dir, not_targets, voice_speeds)") from None
        self.datasets: dict[str, SimulatedMixtures] = {}
        self._resume_batches = 0

    def state_dict(self) -> dict:
        """Saved in checkpoints: how far into the epoch training got, so a resumed run skips those batches."""
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed if trainer is not None else 0
        return {"train_batches_done_in_epoch": int(done)}

    def load_state_dict(self, state: dict) -> None:
        self._resume_batches = int(state.get("train_batches_done_in_epoch", 0))

    def corpus_dirs(self) -> tuple[Path, Path]:
        hp = self.hparams
        if hp.clean_dir is not None:
            return Path(hp.clean_dir), Path(hp.noise_dir)
        root = synthetic.build(hp.synthetic_dir, utterances=hp.synthetic_utterances, seed=hp.seed,
                               real_speech=hp.real_speech)
        return root / "clean", root / "noise"

    def prepare_data(self) -> None:
        self.corpus_dirs()  # builds the synthetic corpus once, in the main process

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        clean, noise = self.corpus_dirs()
        spec = MixSpec(snr_db=tuple(hp.snr_db), t60=tuple(hp.t60),
                       distance=tuple(hp.distance) if hp.distance else None, late_reverb=hp.late_reverb,
                       mic_gain_db=hp.mic_gain_db, sensor_snr_db=tuple(hp.sensor_snr_db) if hp.sensor_snr_db else None,
                       noise_kinds=tuple((hp.noise_kinds or {"noise": 1.0}).items()),
                       talker_snr_floor_db=hp.talker_snr_floor_db)
        test_spec = replace(spec, t60=tuple(hp.test_t60 or spec.t60), snr_db=tuple(hp.test_snr_db or spec.snr_db))
        sizes = {"train": hp.train_items, "val": hp.val_items, "test": hp.test_items, "test_unseen": hp.test_items}
        corpora = {}
        for split, size in sizes.items():
            corpus = corpora.setdefault(split, Corpus(clean, noise, "test" if split == "test_unseen" else split,
                                                      rir_dir=hp.rir_dir,
                                                      quality_floor=hp.speech_quality_floor if split == "train" else None,
                                                      screened=hp.speech_screen and split == "train",
                                                      min_dry_ovrl=hp.test_min_dry_ovrl if split.startswith("test") else None))
            if split == "train" and hp.room_bank:
                self.datasets[split] = self._bank_items(corpus, size, spec)
                continue
            self.datasets[split] = SimulatedMixtures(
                corpus, split, size, hp.seconds, hp.seed, mic_block=self.block(split),
                spec=test_spec if split.startswith("test") else spec, cache_dir=hp.cache_dir,
                measured_fraction=hp.measured_fraction, personalize=self.personalization,
                talker_corpus=corpora["train"] if self.personalization is not None else None,
            )

    def _bank_items(self, corpus: Corpus, size: int, spec: MixSpec):
        from .bank import RoomBank
        from .mixing import BankMixSpec, BankMixtures
        from .pool import pools_from_corpus

        hp = self.hparams
        if self.personalization is not None:
            raise ValueError("room_bank does not make personalized items yet: leave data.room_bank unset for "
                             "personalized recipes")
        speech, noise = pools_from_corpus(corpus)
        mix = BankMixSpec(seconds=hp.seconds, mics=tuple(hp.train_mics), snr_db=spec.snr_db,
                          noise_sources=spec.noise_sources, noise_kinds=spec.noise_kinds,
                          talker_snr_floor_db=spec.talker_snr_floor_db, mic_gain_db=spec.mic_gain_db,
                          sensor_snr_db=spec.sensor_snr_db)
        return BankMixtures(RoomBank(hp.room_bank), speech, noise, size, hp.seed, self.block("train"), mix)

    def block(self, split: str) -> int:
        """Items per batch: the batch size in training; 1 for evaluation, whose items then depend
        on the seed and split only (each item draws its own mic count)."""
        return self.hparams.batch_size if split == "train" else 1

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.datasets[split]
        sampler = BlockBatchSampler(len(data), self.block(split), shuffle, self.hparams.seed)
        workers = self.hparams.num_workers
        return DataLoader(data, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        loader.batch_sampler.skip_next, self._resume_batches = self._resume_batches, 0
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader("test", shuffle=False), self._loader("test_unseen", shuffle=False)]
