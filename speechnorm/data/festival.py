"""More training voices: sentences spoken by the Festival voices of Debian (``speechnorm data``).

A Festival diphone, unit-selection or HTS voice is built from the recordings of one real person
(cut from them, or for HTS a statistical model trained on them),
so each voice is a timbre of its own (the speaker encoder scores two of them 0.62 alike on average,
about what it gives two different people). They join the *training* split only, like the
espeak-ng voices; held-out speakers stay real recordings. They are spoken through ``text2wave``
and need the ``festival`` package and the voices' packages installed::

    apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \\
        festvox-italp16k festvox-itapc16k festvox-czech-dita festvox-czech-krb \\
        festvox-czech-machac festvox-czech-ph festvox-ru festvox-suopuhe-lj festvox-suopuhe-mv \\
        festvox-ca-ona-hts

A voice whose package is missing, or that fails to speak, is reported with the command that
installs it and skipped; the rest goes on. Every voice reads the same English word list
(``synthetic.WORDS``) through its own language's letter-to-sound rules: what matters here is
whose voice it is. Each sentence is drawn from a seeded RNG with a duration stretch of 0.85-1.2
(Festival's ``Duration_Stretch``; the HTS and unit-selection voices, cmu_us_slt_arctic_hts,
upc_ca_ona_hts and msu_ru_nsh_clunits, ignore it and speak at their own pace), so a build is
reproducible; it is written once into a folder (``build``) and reused. Voices speak at
half of Festival's scale: czech_dita's own units reach full scale (flat tops on about 0.06 % of
its samples, measured on one sentence, which stay), and at full scale its output was refused as clipped.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .audio_io import AudioFileError, read_audio, write_audio
from .synthetic import WORDS

log = logging.getLogger(__name__)
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Voice:
    package: str  # the Debian package that installs it
    name: str  # Festival's voice (``(voice_NAME)``)
    language: str
    licence: str  # of the voice's data, from the package's copyright file


VOICES = (
    Voice("festvox-kallpc16k", "kal_diphone", "en", "Festival free licence (CSTR, BSD-like)"),
    Voice("festvox-kdlpc16k", "ked_diphone", "en", "Festival free licence (CSTR, BSD-like)"),
    Voice("festvox-us-slt-hts", "cmu_us_slt_arctic_hts", "en", "EST-2003 / BSD-3-clause (CMU ARCTIC)"),
    Voice("festvox-italp16k", "lp_diphone", "it", "GPL-2+"),
    Voice("festvox-itapc16k", "pc_diphone", "it", "GPL-2+"),
    Voice("festvox-czech-dita", "czech_dita", "cs", "GPL-3+"),
    Voice("festvox-czech-krb", "czech_krb", "cs", "GPL-3+"),
    Voice("festvox-czech-machac", "czech_machac", "cs", "GPL-3+"),
    Voice("festvox-czech-ph", "czech_ph", "cs", "GPL-2+"),
    Voice("festvox-ru", "msu_ru_nsh_clunits", "ru", "BSD-like / GPL-3"),
    Voice("festvox-suopuhe-lj", "suo_fi_lj_diphone", "fi", "LGPL"),
    Voice("festvox-suopuhe-mv", "hy_fi_mv_diphone", "fi", "LGPL"),
    Voice("festvox-ca-ona-hts", "upc_ca_ona_hts", "ca", "LGPL-2.1+ / BSD-3-clause"),
)


class FestivalError(RuntimeError):
    """Festival is not installed, or a voice cannot speak; the message says what to install."""


def require_festival() -> str:
    exe = shutil.which("text2wave")
    if exe is None:
        raise FestivalError("Festival is not installed (text2wave not found); on Debian/Ubuntu: apt-get install -y "
                            "festival " + " ".join(v.package for v in VOICES))
    return exe


def speak(text: str, voice: Voice, stretch: float, exe: str) -> np.ndarray:
    """``voice`` says ``text`` at ``stretch`` times its own durations -> mono float32 at 16 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav, script = Path(tmp) / "utt.wav", Path(tmp) / "utt.txt"
        script.write_text(text + "\n")
        # at half scale: some voices (czech_dita) clip at Festival's own full scale
        command = [exe, "-eval", f"(begin (voice_{voice.name}) (Parameter.set 'Duration_Stretch {stretch:.3f}))",
                   "-scale", "0.5", str(script), "-o", str(wav)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise FestivalError(f"Festival voice {voice.name} did not finish within 120 s") from None
        if done.returncode != 0 or not wav.exists():
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            raise FestivalError(f"Festival voice {voice.name} could not speak ({detail[0]}); is it installed? "
                                f"apt-get install -y {voice.package}")
        try:
            audio, _ = read_audio(wav, SAMPLE_RATE)
        except AudioFileError as err:
            raise FestivalError(f"Festival voice {voice.name} wrote no usable audio ({err})") from None
    audio = audio[0].numpy()
    if not np.abs(audio).max() > 1e-3:
        raise FestivalError(f"Festival voice {voice.name} spoke only silence")
    return audio


def build(root: str | Path, utterances: int = 40, seed: int = 0, voices: tuple[Voice, ...] = VOICES) -> Path:
    """Write ``root/NAME_NNN.wav`` (``utterances`` sentences per voice that speaks) and
    ``root/voices.tsv`` (name, package, version, language, licence of each voice used), unless a build
    with these settings is there, and no voice it skipped has been installed since. The build is made
    beside ``root`` and moved into place when it is done, so a failed build leaves the last good one.
    Raises ``FestivalError`` when Festival is missing, no voice speaks, or ``root`` holds something
    that is not a Festival build."""
    root = Path(root)
    done = root / ".complete"
    settings = f"utterances={utterances} seed={seed} voices={','.join(v.name for v in voices)}\n"
    if done.exists() and done.read_text() == settings:
        spoken = set(voices_of(root))
        since = [v.package for v in voices if v.name not in spoken and package_version(v.package)]
        if not since:
            return root
        log.warning("Festival voices installed since the last build (%s): building again", " ".join(since))
    elif root.exists() and any(root.iterdir()) and not done.exists():
        raise FestivalError(f"{root} is not empty and is not a Festival build; remove it or choose another folder")
    exe = require_festival()
    work = root.with_name(root.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    used = []
    for number, voice in enumerate(voices):
        rng = np.random.default_rng([seed, number])
        try:
            for i in range(utterances):
                words = rng.choice(WORDS, size=int(rng.integers(8, 16)))
                audio = speak(" ".join(words), voice, float(rng.uniform(0.85, 1.2)), exe)
                write_audio(work / f"{voice.name}_{i:03d}.wav", torch.from_numpy(0.5 * audio / np.abs(audio).max()),
                            SAMPLE_RATE)
        except FestivalError as err:
            log.warning("skipping Festival voice %s: %s", voice.name, err)
            for partial in work.glob(f"{voice.name}_*.wav"):
                partial.unlink()
            continue
        used.append(voice)
    if not used:
        shutil.rmtree(work, ignore_errors=True)
        raise FestivalError("no Festival voice could speak; install them: apt-get install -y festival "
                            + " ".join(v.package for v in voices))
    lines = ["name\tpackage\tversion\tlanguage\tlicence"]
    lines += [f"{v.name}\t{v.package}\t{package_version(v.package)}\t{v.language}\t{v.licence}" for v in used]
    (work / "voices.tsv").write_text("\n".join(lines) + "\n")
    (work / ".complete").write_text(settings)
    shutil.rmtree(root, ignore_errors=True)  # the last build (another build's files must not mix into this one)
    work.rename(root)
    return root


def package_version(package: str) -> str:
    """The installed version of a Debian package ('' when unknown)."""
    try:
        done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def voices_of(folder: str | Path) -> dict[str, dict[str, str]]:
    """A build's ``voices.tsv``: voice name -> its row."""
    lines = (Path(folder) / "voices.tsv").read_text().splitlines()
    keys = lines[0].split("\t")
    return {row["name"]: row for row in (dict(zip(keys, line.split("\t"))) for line in lines[1:] if line)}
