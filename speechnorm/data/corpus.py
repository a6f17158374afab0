"""Corpora of clean speech and noise: folders of audio files, checked, split, loaded.

A user with DNS-Challenge / LibriSpeech / MUSAN / VCTK on disk points ``clean_dir`` and
``noise_dir`` at them (searched recursively for .wav/.flac). Files are split into
train/val/test by a stable hash of their path, so the splits never share a file. A file that
cannot be used (unreadable, empty, too low a rate, NaN, clipped) is reported with its path and
skipped, never a crash inside a worker.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import soundfile as sf
from torch import Tensor

from .audio_io import MIN_SAMPLE_RATE, AudioFileError, read_audio

log = logging.getLogger(__name__)
SPLITS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
AUDIO_SUFFIXES = {".wav", ".flac"}


def split_of(path: Path) -> str:
    """The split of a file, by a stable hash of its name. Variants named ``STEM__VARIANT.ext``
    (e.g. speed-perturbed copies) hash as ``STEM``, so one recording never straddles two splits."""
    group = path.name.split("__")[0]
    fraction = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return next(name for name, (low, high) in SPLITS.items() if low <= fraction < high or (high == 1.0 and fraction == 1.0))


def read_manifest(folder: str | Path) -> dict[str, dict] | None:
    """``folder/manifest.csv`` (``speechnorm data``) as {resolved file path: row}; None when absent."""
    path = Path(folder) / "manifest.csv"
    if not path.exists():
        return None
    with open(path, newline="") as handle:
        return {str((Path(folder) / row["file"]).resolve()): row for row in csv.DictReader(handle)}


QUALITY_KEYS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")


def read_quality(folder: str | Path) -> dict[str, dict[str, float]]:
    """DNSMOS of the utterances of ``folder`` (``scripts/corpus_quality.py --all`` writes
    ``folder/quality-*.csv``) as {resolved file path: {key: value}}; empty when none is there."""
    scores = {}
    for path in sorted(Path(folder).glob("quality-*.csv")):
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    scores[str((Path(folder) / row["file"]).resolve())] = {k: float(row[k]) for k in QUALITY_KEYS}
                except (KeyError, TypeError, ValueError):
                    log.warning("skipping a malformed row of %s: %s", path, row)
    return scores


def screen(files: list[Path], quality: dict[str, dict[str, float]], floor: dict[str, float], where: str) -> list[Path]:
    """The ``files`` whose DNSMOS scores reach every ``floor`` ({key: minimum}, keys of
    ``QUALITY_KEYS``). Files without a score are kept and counted; a corpus with no scores at all,
    an unknown key, or a floor that leaves nothing is an error."""
    unknown = set(floor) - set(QUALITY_KEYS)
    if unknown:
        raise ValueError(f"quality floor keys must be among {QUALITY_KEYS}, got {sorted(unknown)}")
    if not quality:
        raise ValueError(f"a speech quality floor needs DNSMOS scores of {where}: run "
                         "`python scripts/corpus_quality.py --all` first")
    kept, dropped, unscored = [], 0, 0
    for path in files:
        scores = quality.get(str(Path(path).resolve()))
        if scores is None:
            unscored += 1
            kept.append(path)
        elif all(scores[key] >= minimum for key, minimum in floor.items()):
            kept.append(path)
        else:
            dropped += 1
    if not kept:
        raise ValueError(f"the quality floor {floor} leaves no speech in {where}")
    log.info("quality floor %s on %s: kept %d of %d utterances (%d below it dropped, %d unscored kept)",
             floor, where, len(kept), len(files), dropped, unscored)
    if unscored:
        log.warning("%d utterances of %s have no DNSMOS score and were kept", unscored, where)
    return kept


def scan(folder: str | Path) -> list[Path]:
    """Audio files under ``folder`` whose headers read, sorted; the others are reported."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"corpus folder {folder} does not exist")
    good = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        try:
            info = sf.info(str(path))
        except Exception as err:
            log.warning("skipping %s: cannot read audio (%s)", path, err)
            continue
        if info.frames == 0:
            log.warning("skipping %s: empty (0 samples)", path)
        elif info.samplerate < MIN_SAMPLE_RATE:
            log.warning("skipping %s: sample rate %d Hz is below %d Hz", path, info.samplerate, MIN_SAMPLE_RATE)
        else:
            good.append(path)
    if not good:
        raise FileNotFoundError(f"no usable .wav/.flac files under {folder}")
    return good


def scan_rooms(rir_dir: str | Path) -> list[tuple[Path, int]]:
    """Measured RIR sets: each sub-folder of ``rir_dir`` is one room and array, holding one
    multi-channel file per source position (channels = mics, mic 0 the reference). Returns
    (folder, mics) for rooms with at least two positions and one channel count; others reported."""
    rooms = []
    for folder in sorted({p.parent for p in scan(rir_dir)}):
        files = [p for p in scan(folder) if p.parent == folder]
        channels = {sf.info(str(p)).channels for p in files}
        if len(files) < 2 or len(channels) != 1:
            log.warning("skipping RIR room %s: needs two or more files with one channel count, has %d file(s), "
                        "channel counts %s", folder, len(files), sorted(channels))
            continue
        rooms.append((folder, channels.pop()))
    return rooms


class Corpus:
    """Clean speech and noise files (and optionally measured RIR rooms) for one split.
    ``screened``: only the utterances ``speechnorm screen`` kept (``clean_dir/screen.csv``).
    ``min_dry_ovrl``: only utterances whose dry DNSMOS OVRL (the screen's scores) reaches it.

    A folder with a ``manifest.csv`` (``speechnorm data``) is split by its ``split`` column, which
    holds out whole speakers, and names each file's speaker and source package; other folders
    split by a hash of the file name and treat each file's name group as its speaker.
    """

    def __init__(self, clean_dir: str | Path, noise_dir: str | Path, split: str, sample_rate: int = 16_000,
                 rir_dir: str | Path | None = None, quality_floor: dict[str, float] | None = None,
                 screened: bool = False, min_dry_ovrl: float | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.sample_rate = sample_rate
        self.manifest = {**(read_manifest(clean_dir) or {}), **(read_manifest(noise_dir) or {})}
        self.clean = self._pick(scan(clean_dir), split, self.manifest)
        if quality_floor:
            self.clean = screen(self.clean, read_quality(clean_dir), quality_floor, f"{clean_dir} ({split})")
        if screened:  # ``speechnorm screen``'s decisions (speechnorm/data/screen.py)
            from .screen import read_kept

            kept = read_kept(clean_dir)
            chosen = [p for p in self.clean if str(Path(p).resolve()) in kept]
            if not chosen:
                raise ValueError(f"the screen of {clean_dir} keeps none of the {len(self.clean)} {split} utterances")
            log.info("screened %s (%s): kept %d of %d utterances", clean_dir, split, len(chosen), len(self.clean))
            self.clean = chosen
        if min_dry_ovrl is not None:  # clean targets: the utterances the screen scored this well, dry
            from .screen import read_dnsmos

            scores = read_dnsmos(clean_dir)
            chosen = [p for p in self.clean if scores.get(str(Path(p).resolve()), float("-inf")) >= min_dry_ovrl]
            if not chosen:
                raise ValueError(f"no {split} utterance of {clean_dir} has a dry DNSMOS OVRL of {min_dry_ovrl} or more "
                                 "(scored by `speechnorm screen`)")
            self.clean = chosen
        self.noise = self._pick(scan(noise_dir), split, self.manifest)
        # noise by kind: recorded (real recordings from packages) or generated (the built-in kinds)
        self.noise_by_kind = {"noise": self.noise,
                              "recorded": [p for p in self.noise if self._row(p).get("package", "speechnorm") != "speechnorm"],
                              "generated": [p for p in self.noise if self._row(p).get("package", "speechnorm") == "speechnorm"]}
        rooms = scan_rooms(rir_dir) if rir_dir is not None else []
        self.rooms = [room for room in rooms if split_of(room[0]) == split] or rooms

    def load_rirs(self, folder: Path, picks: list[int], mics: int) -> list[Tensor]:
        """The RIR sets at positions ``picks`` (indices into the room's files), first ``mics`` channels."""
        files = [p for p in scan(folder) if p.parent == folder]
        return [read_audio(files[i % len(files)], self.sample_rate, check_clipping=False)[0][:mics] for i in picks]

    def _row(self, path: Path) -> dict:
        return self.manifest.get(str(Path(path).resolve()), {})

    def speaker(self, path: Path) -> str:
        """The file's speaker (manifest), else its name group."""
        return self._row(path).get("speaker") or Path(path).name.split("__")[0]

    def voice_files(self, speaker: str) -> list[Path]:
        """The clean files of ``speaker`` (enrollment for personalized items draws from these)."""
        if not hasattr(self, "_by_speaker"):
            self._by_speaker: dict[str, list[Path]] = {}
            for path in self.clean:
                self._by_speaker.setdefault(self.speaker(path), []).append(path)
        return self._by_speaker.get(speaker, [])

    def other_voices(self, speaker: str) -> list[Path]:
        """The clean files of every other speaker (all files when there is no other), computed once
        per speaker: babble and competing talkers draw from these for every item."""
        if not hasattr(self, "_others"):
            self._others: dict[str, list[Path]] = {}
            self._clean_speakers = [self.speaker(p) for p in self.clean]
        if speaker not in self._others:
            others = [p for p, who in zip(self.clean, self._clean_speakers) if who != speaker]
            self._others[speaker] = others or self.clean
        return self._others[speaker]

    @staticmethod
    def _pick(files: list[Path], split: str, manifest: dict) -> list[Path]:
        def split_for(path: Path) -> str:
            row = manifest.get(str(path.resolve()))
            return row["split"] if row else split_of(path)

        chosen = [f for f in files if split_for(f) == split]
        return chosen or files  # a tiny corpus may leave a split empty: then share all files

    def load(self, kind: str, index: int, files: list[Path] | None = None, with_path: bool = False):
        """The first usable file from ``index`` on (mono, at the sample rate); bad ones are reported.
        ``kind`` is "clean" or a noise kind ("noise", "recorded", "generated"); ``files`` overrides the list."""
        if files is None:
            files = self.clean if kind == "clean" else (self.noise_by_kind.get(kind) or self.noise)
        for attempt in range(len(files)):
            path = files[(index + attempt) % len(files)]
            try:
                audio = read_audio(path, self.sample_rate)[0].mean(dim=0)
                return (audio, path) if with_path else audio
            except AudioFileError as err:
                log.warning("skipping %s", err)
        raise AudioFileError(f"no usable {kind} file left in the corpus ({len(files)} tried)")
