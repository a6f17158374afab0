"""A corpus of real recorded speech and noise, built from Debian packages (``speechnorm data``).

Each ``Source`` names a package, its licence, which of its files are audio, and whose voice each
file is. ``build`` fetches the packages with ``apt-get download`` (no root needed) into a cache,
unpacks them with ``dpkg-deb``, decodes every file (soundfile; G.722 through ffmpeg), resamples
to 16 kHz (soxr), trims silence and cuts speech at pauses into utterances of 1-15 s (noise into
pieces of at most 10 s), and writes FLAC files plus a manifest per kind (``manifest.csv``: file,
kind, speaker, language, package, version, licence, seconds, split).

Splits hold out **whole speakers** (``HELD_OUT``: a speaker's utterances are all on one side).
Noise splits by recording (a track's pieces share a split). Bad input never stops a build: a
package that cannot be fetched, a file that does not decode, silence only, a rate below 16 kHz,
or one speaker id claimed by two sources that do not declare the same voice is reported with
its path and skipped; the rest goes on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf

from .corpus import read_manifest, split_of
from .resample import resample

log = logging.getLogger(__name__)
SAMPLE_RATE = 16_000
FRAME = 320  # 20 ms analysis frames for trimming and segmenting
MANIFEST_FIELDS = ["file", "kind", "speaker", "language", "package", "version", "licence", "seconds", "split"]

#: Speakers held out of training, by split; every other speaker trains. Chosen so that test has
#: a male and two female voices in three languages, none of whom the training split ever hears.
HELD_OUT = {
    "fillets-nl:big_fish": "test",   # Dutch, male, ~50 min
    "asterisk:june": "test",         # Canadian French, female, ~25 min
    "asterisk:ru": "test",           # Russian, female, ~24 min
    "asterisk:carlo": "val",         # Italian, ~23 min
}

Entry = tuple[Path, str, str]  # (audio file, speaker, language)


@dataclass(frozen=True)
class Source:
    """One package's audio: ``entries(root)`` lists (file, speaker, language) under its unpacked root
    (for noise the speaker is empty). ``voices``: speaker ids this source shares with another source
    because they are the same person (declared, so not reported as a duplicate)."""

    package: str
    licence: str
    kind: str  # "speech" or "noise"
    entries: Callable[[Path, dict], Iterator[Entry]]
    needs: tuple[str, ...] = ()  # other packages whose files ``entries`` reads (e.g. dialogue scripts)
    voices: frozenset = field(default_factory=frozenset)


def _fillets_speakers(scripts: Path) -> dict[str, str]:
    """Dialogue id -> speaker, from the game's scripts: ``dialogId("ID", "font_small", ...)``."""
    speakers = {}
    pattern = re.compile(r'dialogId\(\s*"([^"]+)"\s*,\s*"font_([a-z0-9_]+)"')
    for script in sorted(scripts.rglob("*.lua")):
        for dialogue, font in pattern.findall(script.read_text(errors="replace")):
            speakers[dialogue] = {"small": "small_fish", "big": "big_fish"}.get(font, font)
    return speakers


def fillets(language: str) -> Callable[[Path, dict], Iterator[Entry]]:
    def entries(root: Path, others: dict) -> Iterator[Entry]:
        scripts = others.get("fillets-ng-data")
        speakers = _fillets_speakers(scripts / "usr/share/games/fillets-ng/script") if scripts else {}
        for path in sorted((root / "usr/share/games/fillets-ng/sound").glob(f"*/{language}/*.ogg")):
            name = path.stem
            speaker = speakers.get(name) or ("small_fish" if "-m-" in name or name.endswith("-m")
                                             else "big_fish" if "-v-" in name or "_v_" in name else None)
            if speaker is None:
                log.warning("skipping %s: no speaker known for this dialogue line", path)
                continue
            # side characters may share the fish actors' voices: one group, kept in training
            group = speaker if speaker in ("small_fish", "big_fish") else "side_characters"
            yield path, f"fillets-{language}:{group}", language
    return entries


ASTERISK_SKIP = re.compile(r"^(beep|beeperr|ascending-2tone|descending-2tone|tt-monkeys)$")


def asterisk(voice_dir: str, speaker: str, language: str) -> Callable[[Path, dict], Iterator[Entry]]:
    def entries(root: Path, others: dict) -> Iterator[Entry]:
        base = root / "usr/share/asterisk/sounds" / voice_dir
        for path in sorted(base.rglob("*.g722")):
            if "silence" in path.relative_to(base).parts or ASTERISK_SKIP.match(path.stem):
                continue
            yield path, f"asterisk:{speaker}", language
    return entries


TUXPAINT_DESCRIPTION = re.compile(r"_desc_([a-z]{2,3})\.ogg$")


def tuxpaint(languages: tuple[str, ...]) -> Callable[[Path, dict], Iterator[Entry]]:
    """Tux Paint's spoken stamp descriptions (``<stamp>_desc_<lang>.ogg``; the stamps' own sound
    effects and name files are left out). Each language was read by one to three volunteers whom
    the package does not name per file, so a language is one speaker group: it is never split."""
    def entries(root: Path, others: dict) -> Iterator[Entry]:
        for path in sorted((root / "usr/share/tuxpaint/stamps").rglob("*_desc_*.ogg")):
            found = TUXPAINT_DESCRIPTION.search(path.name)
            if found and found.group(1) in languages:
                yield path, f"tuxpaint:{found.group(1)}", found.group(1)
    return entries


#: Tux Paint languages with enough minutes to matter (da, lt, ml, nl have 6-322 short files)
TUXPAINT_LANGUAGES = ("be", "bg", "ca", "el", "es", "fr", "ro", "ru")


def noise_files(*folders: str, suffixes=(".ogg", ".wav", ".g722", ".opus", ".flac")) -> Callable[[Path, dict], Iterator[Entry]]:
    def entries(root: Path, others: dict) -> Iterator[Entry]:
        for folder in folders:
            for path in sorted((root / folder).rglob("*")):
                if path.suffix.lower() in suffixes and path.is_file():
                    yield path, "", ""
    return entries


SOURCES = [
    Source("fillets-ng-data-cs", "GPL-2", "speech", fillets("cs"), needs=("fillets-ng-data",)),
    Source("fillets-ng-data-nl", "GPL-2", "speech", fillets("nl"), needs=("fillets-ng-data",)),
    Source("asterisk-core-sounds-en-g722", "CC-BY-SA-3.0", "speech", asterisk("en_US_f_Allison", "allison", "en"),
           voices=frozenset({"asterisk:allison"})),
    Source("asterisk-core-sounds-es-g722", "CC-BY-SA-3.0", "speech", asterisk("es_MX_f_Allison", "allison", "es"),
           voices=frozenset({"asterisk:allison"})),  # the same voice talent as the English set
    Source("asterisk-core-sounds-fr-g722", "CC-BY-SA-3.0", "speech", asterisk("fr_CA_f_June", "june", "fr")),
    Source("asterisk-core-sounds-it-g722", "CC-BY-SA-3.0", "speech", asterisk("it_IT_m_Carlo", "carlo", "it")),
    Source("asterisk-core-sounds-ru-g722", "CC-BY-SA-3.0", "speech", asterisk("ru_RU_f_IvrvoiceRU", "ru", "ru")),
    Source("tuxpaint-stamps-default", "GPL-2", "speech", tuxpaint(TUXPAINT_LANGUAGES)),
    Source("fillets-ng-data", "GPL-2", "noise", noise_files("usr/share/games/fillets-ng/music")),
    Source("asterisk-moh-opsound-g722", "CC-BY-SA-3.0", "noise", noise_files("usr/share/asterisk/moh")),
    Source("colobot-common-sounds", "GPL-3+", "noise", noise_files("usr/share/games/colobot/music",
                                                                     "usr/share/games/colobot/sounds")),
    Source("lincity-ng-data", "GPL-2+", "noise", noise_files("usr/share/games/lincity-ng/sounds")),
]


class CorpusInputError(ValueError):
    """A file or package the corpus cannot use; the message names it."""


def fetch(package: str, cache: Path) -> tuple[Path, str] | None:
    """The unpacked package folder and its version, downloading the .deb into ``cache/debs`` if it
    is not there yet. None (reported) when it cannot be fetched or unpacked."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        try:
            subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", b"") or b""
            log.warning("could not fetch package %s (%s); going on without it", package,
                        detail.decode(errors="replace").strip() or err)
            return None
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            log.warning("could not fetch package %s (apt-get wrote no .deb); going on without it", package)
            return None
    deb, target = found[-1], cache / "pkgs" / package
    try:
        version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                                 text=True).stdout.strip()
        if not (target / ".unpacked").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True, capture_output=True)
            (target / ".unpacked").write_text(version)
    except (OSError, subprocess.SubprocessError) as err:
        detail = (getattr(err, "stderr", b"") or b"").decode(errors="replace").strip()
        log.warning("could not unpack %s (%s); going on without it", deb, detail or err)
        return None
    return target, version


def decode(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the file's own rate. G.722 goes through ffmpeg (16 kHz)."""
    try:
        if path.suffix == ".g722":
            wav = subprocess.run(["ffmpeg", "-v", "error", "-f", "g722", "-i", str(path), "-f", "wav", "-"],
                                 check=True, capture_output=True, timeout=120).stdout
            audio, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
        else:
            audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError, subprocess.SubprocessError, sf.LibsndfileError) as err:
        raise CorpusInputError(f"{path}: cannot decode ({str(err).strip()[:200]})") from None
    if audio.size == 0:
        raise CorpusInputError(f"{path}: no samples")
    if not np.isfinite(audio).all():
        raise CorpusInputError(f"{path}: NaN or infinite samples")
    return audio.mean(axis=1), int(rate)


def active_frames(audio: np.ndarray, floor_db: float = -60.0, below_peak_db: float = 40.0) -> np.ndarray:
    """Per 20 ms frame: is it louder than ``below_peak_db`` under the loudest frame (and the floor)?"""
    frames = len(audio) // FRAME
    if frames == 0:
        return np.zeros(0, bool)
    rms_db = 10 * np.log10(np.mean(audio[: frames * FRAME].reshape(frames, FRAME) ** 2, axis=1) + 1e-12)
    return rms_db > max(floor_db, rms_db.max() - below_peak_db)


def segments(audio: np.ndarray, path: Path, pause_s: float = 0.5, min_s: float = 1.0, max_s: float = 15.0,
             margin_s: float = 0.1) -> list[np.ndarray]:
    """Speech at 16 kHz -> utterances: silence trimmed, cut at pauses of ``pause_s`` or more,
    pieces shorter than ``min_s`` dropped, longer than ``max_s`` cut evenly."""
    active = active_frames(audio)
    if not active.any():
        raise CorpusInputError(f"{path}: silence only")
    frame_s = FRAME / SAMPLE_RATE
    runs, start, gap = [], None, 0
    for i, on in enumerate(active):
        if on:
            start, gap = (i if start is None else start), 0
        elif start is not None:
            gap += 1
            if gap * frame_s >= pause_s:
                runs.append((start, i - gap + 1))
                start, gap = None, 0
    if start is not None:
        runs.append((start, len(active) - gap))
    margin = int(margin_s / frame_s)
    pieces = []
    for first, last in runs:
        lo, hi = max(0, first - margin) * FRAME, min(len(active), last + margin) * FRAME
        piece = audio[lo:hi]
        count = int(np.ceil(len(piece) / (max_s * SAMPLE_RATE)))
        pieces += [p for p in np.array_split(piece, count) if len(p) >= min_s * SAMPLE_RATE]
    return pieces


def noise_pieces(audio: np.ndarray, path: Path, max_s: float = 10.0, min_s: float = 1.0) -> list[np.ndarray]:
    """Noise at 16 kHz -> pieces of at most ``max_s`` (silent pieces dropped)."""
    if not active_frames(audio).any():
        raise CorpusInputError(f"{path}: silence only")
    size = int(max_s * SAMPLE_RATE)
    pieces = [audio[i : i + size] for i in range(0, len(audio), size)]
    return [p for p in pieces if len(p) >= min_s * SAMPLE_RATE and active_frames(p, below_peak_db=60).mean() > 0.2]


def build(root: str | Path, cache: str | Path | None = None, sources: list[Source] | None = None,
          espeak_dir: str | Path | None = None, festival_dir: str | Path | None = None) -> Path:
    """Build (or complete) the corpus under ``root``: ``speech/`` and ``noise/`` with a manifest each.
    ``espeak_dir``: a built synthetic corpus (``synthetic.build``) whose speech and generated noise
    join the training split (espeak voices are extra voices, never held out). ``festival_dir``: a
    build of ``festival.build``, whose voices join the training split as well. Returns ``root``."""
    root = Path(root)
    cache = Path(cache) if cache else root / "cache"
    sources = SOURCES if sources is None else sources
    unpacked: dict[str, tuple[Path, str]] = {}
    for package in dict.fromkeys(p for s in sources for p in (s.package, *s.needs)):
        got = fetch(package, cache)
        if got is not None:
            unpacked[package] = got
    declared = {s.package: s.voices for s in sources}
    rows: dict[str, list[dict]] = {"speech": [], "noise": []}
    claimed: dict[str, str] = {}
    for source in sources:
        if source.package not in unpacked:
            continue
        folder, version = unpacked[source.package]
        others = {name: path for name, (path, _) in unpacked.items()}
        for path, speaker, language in source.entries(folder, others):
            if speaker:
                owner = claimed.setdefault(speaker, source.package)
                if owner != source.package and not (speaker in source.voices and speaker in declared.get(owner, ())):
                    log.warning("skipping %s: speaker id %s is already used by package %s (a different voice); "
                                "declare it in both sources' voices if it is the same person", path, speaker, owner)
                    continue
            try:
                audio, rate = decode(path)
                if rate < SAMPLE_RATE:
                    raise CorpusInputError(f"{path}: sample rate {rate} Hz is below {SAMPLE_RATE} Hz (band-limited)")
                audio = resample(audio, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else audio
                pieces = segments(audio, path) if source.kind == "speech" else noise_pieces(audio, path)
            except CorpusInputError as err:
                log.warning("skipping %s", err)
                continue
            rows[source.kind] += _write(root, source, version, path.relative_to(folder), speaker, language, pieces)
    if espeak_dir is not None:
        rows["speech"] += _adopt(root, Path(espeak_dir) / "clean", "speech")
        rows["noise"] += _adopt(root, Path(espeak_dir) / "noise", "noise")
    if festival_dir is not None:
        rows["speech"] += adopt_festival(root, festival_dir)
    for kind, kind_rows in rows.items():
        _write_manifest(root / kind / "manifest.csv", kind_rows)
    return root


def _write(root: Path, source: Source, version: str, path: Path, speaker: str, language: str,
           pieces: list[np.ndarray]) -> list[dict]:
    """Write one source file's pieces; ``path`` is inside the package, so names are the same on every machine."""
    group = speaker.replace(":", "/") if speaker else source.package
    # one name per source file: the same file name recurs in different folders of a package
    where = hashlib.sha1(str(path).encode()).hexdigest()[:6]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) + f"-{where}"
    out = []
    for k, piece in enumerate(pieces):
        relative = Path(group) / f"{stem}__p{k:02d}.flac"
        target = root / source.kind / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        peak = float(np.abs(piece).max())
        sf.write(str(target), piece / peak * 0.9 if peak > 0.99 else piece, SAMPLE_RATE, subtype="PCM_16")
        split = HELD_OUT.get(speaker, "train") if speaker else split_of(target)
        out.append({"file": str(relative), "kind": source.kind, "speaker": speaker, "language": language,
                    "package": source.package, "version": version, "licence": source.licence,
                    "seconds": round(len(piece) / SAMPLE_RATE, 3), "split": split})
    return out


def _adopt(root: Path, folder: Path, kind: str) -> list[dict]:
    """The synthetic corpus's files (espeak-ng speech, generated noise), linked in for training."""
    out = []
    for path in sorted(folder.glob("*.wav")):
        relative = Path("espeak-ng" if kind == "speech" else "generated") / path.name
        target = root / kind / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copyfile(path, target)
        speaker, package, licence = synthetic_origin(path.stem, kind)
        out.append({"file": str(relative), "kind": kind, "speaker": speaker, "language": "", "package": package,
                    "version": "", "licence": licence, "seconds": round(sf.info(str(target)).duration, 3),
                    "split": "train" if kind == "speech" else split_of(target)})
    return out


def adopt_festival(root: Path, folder: str | Path) -> list[dict]:
    """The speech of a Festival build (``festival.build``), copied in as training utterances; each
    voice is a speaker ``festival:NAME`` with its package, version and licence."""
    from .festival import voices_of

    voices, out = voices_of(folder), []
    for path in sorted(Path(folder).glob("*.wav")):
        name = path.stem.rsplit("_", 1)[0]
        if name not in voices:
            log.warning("skipping %s: voice %s is not in the build's voices.tsv", path, name)
            continue
        relative = Path("festival") / path.name
        target = Path(root) / "speech" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        voice = voices[name]
        out.append({"file": str(relative), "kind": "speech", "speaker": f"festival:{name}", "language": voice["language"],
                    "package": voice["package"], "version": voice["version"], "licence": voice["licence"],
                    "seconds": round(sf.info(str(target)).duration, 3), "split": "train"})
    return out


def synthetic_origin(stem: str, kind: str) -> tuple[str, str, str]:
    """(speaker, package, licence) of a built-in corpus file: ``synth_NNNN_VOICE`` is an espeak-ng
    voice, ``real_*`` a piece of the bundled real conversation, noise is generated."""
    if kind != "speech":
        return "", "speechnorm", "generated by speechnorm"
    if stem.startswith("real_"):
        return "assets:conversation", "speechnorm", "MIT (pyannote-audio sample, speechnorm/assets/real_speech)"
    return "espeak-ng:" + stem.split("_", 2)[-1], "speechnorm", "espeak-ng voices (GPL-3+), generated"


def _write_manifest(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def summary(root: str | Path) -> str:
    """Hours and speakers per split, per kind: a markdown table."""
    lines = ["| kind | split | hours | speakers | files |", "|---|---|---:|---:|---:|"]
    for kind in ("speech", "noise"):
        rows = read_manifest(Path(root) / kind) or {}
        for split in ("train", "val", "test"):
            chosen = [r for r in rows.values() if r["split"] == split]
            speakers = {r["speaker"] for r in chosen if r["speaker"]}
            lines.append(f"| {kind} | {split} | {sum(float(r['seconds']) for r in chosen) / 3600:.2f} | "
                         f"{len(speakers) if kind == 'speech' else '-'} | {len(chosen)} |")
    return "\n".join(lines)
