"""A built-in corpus for machines without one: espeak-ng speech, real recorded speech, generated noises.

Speech: sentences drawn from a word list, spoken by espeak-ng in several voices and languages
with varied rate and pitch; and (``real_speech``) the turns of the real conversation shipped in
``speechnorm/assets/real_speech`` that start after ``HELD_OUT_SECONDS`` (the start is held out
for the bundled example and export verification), in pieces of at most 3 s, each also speed-
perturbed by 0.9 and 1.1 (named ``STEM__sSPEED`` so that a piece's variants share a split). Noise: white, pink and brown noise, mains hum with harmonics,
transient clicks, and babble (several other utterances summed). Everything is seeded, so a
build is reproducible; it is written once into a folder and reused.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from .audio_io import read_audio, write_audio
from .resample import played_faster

SAMPLE_RATE = 16_000
VOICES = ["en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en+f3", "en-us+f2", "en+m3", "de", "fr", "es", "it", "nl"]
WORDS = (
    "the a small quiet river runs past old houses while children play near green fields and "
    "people talk about weather music work travel food family stories news market morning evening "
    "light rain wind sun bright cold warm long short fast slow open close window door table chair "
    "book paper letter number seven twelve twenty hundred first second last every many some "
    "please call tomorrow today yesterday meeting station train ticket coffee water bread garden "
    "flower city street corner bridge mountain ocean island winter summer spring autumn clock hour"
).split()


def require_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; on Debian/Ubuntu: apt-get install -y espeak-ng")
    return exe


def speak(text: str, voice: str, rate: int, pitch: int, exe: str) -> torch.Tensor:
    """espeak-ng -> mono float32 at 16 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "utt.wav"
        subprocess.run([exe, "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(wav), text],
                       check=True, capture_output=True, timeout=60)
        audio, _ = read_audio(wav, SAMPLE_RATE)
    return audio[0]


def coloured_noise(rng: np.random.Generator, samples: int, exponent: float) -> torch.Tensor:
    """Noise with a 1/f^exponent power spectrum (0 white, 1 pink, 2 brown), unit RMS."""
    spectrum = rng.standard_normal(samples // 2 + 1) + 1j * rng.standard_normal(samples // 2 + 1)
    freqs = np.maximum(np.fft.rfftfreq(samples), 1.0 / samples)
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2), n=samples)
    return torch.from_numpy(noise / (noise.std() + 1e-12)).float()


def hum(rng: np.random.Generator, samples: int) -> torch.Tensor:
    t = np.arange(samples) / SAMPLE_RATE
    base = rng.choice([50.0, 60.0]) * rng.uniform(0.99, 1.01)
    wave = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * base * t + rng.uniform(0, 6.3)) for k in range(1, 8))
    wave = wave * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t)) + 0.05 * rng.standard_normal(samples)
    return torch.from_numpy(wave / wave.std()).float()


def clicks(rng: np.random.Generator, samples: int) -> torch.Tensor:
    out = 0.02 * rng.standard_normal(samples)
    for start in rng.integers(0, samples - 400, size=rng.integers(10, 40)):
        length = int(rng.integers(20, 400))
        out[start : start + length] += rng.uniform(0.5, 3) * rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
    return torch.from_numpy(out / out.std()).float()


HELD_OUT_SECONDS = 14.5
PIECE_SECONDS = 3.0
SPEEDS = (0.9, 1.0, 1.1)


def real_speech_pieces() -> list[tuple[str, torch.Tensor]]:
    """(name, audio) for every piece of the real conversation's turns after the held-out start."""
    from ..assets import REAL_SPEECH

    audio = read_audio(REAL_SPEECH, SAMPLE_RATE)[0][0]
    turns = []
    for line in REAL_SPEECH.with_suffix(".rttm").read_text().splitlines():
        fields = line.split()
        start, duration = float(fields[3]), float(fields[4])
        if start + duration > HELD_OUT_SECONDS:
            turns.append((max(start, HELD_OUT_SECONDS), start + duration))
    pieces = []
    for index, (start, end) in enumerate(sorted(turns)):
        for k, piece_start in enumerate(np.arange(start, end - 0.5, PIECE_SECONDS)):
            piece = audio[int(piece_start * SAMPLE_RATE) : int(min(end, piece_start + PIECE_SECONDS) * SAMPLE_RATE)]
            for speed in SPEEDS:
                varied = torch.from_numpy(played_faster(piece[None].numpy(), SAMPLE_RATE, speed)[0])
                pieces.append((f"real_{index:02d}_{k}__s{speed:.1f}", 0.5 * varied / (varied.abs().max() + 1e-9)))
    return pieces


def build(root: str | Path, utterances: int = 120, noises_per_kind: int = 4, seed: int = 0, real_speech: bool = True) -> Path:
    """Write ``root/clean/*.wav`` and ``root/noise/*.wav`` unless a build with these settings is there."""
    root = Path(root)
    done = root / ".complete"
    settings = f"utterances={utterances} noises_per_kind={noises_per_kind} seed={seed} real_speech={real_speech}\n"
    if done.exists() and done.read_text() == settings:
        return root
    for folder in ("clean", "noise"):  # another build's files must not mix into this one
        shutil.rmtree(root / folder, ignore_errors=True)
    done.unlink(missing_ok=True)
    exe = require_espeak()
    rng = np.random.default_rng(seed)
    speech = []
    for i in range(utterances):
        words = rng.choice(WORDS, size=int(rng.integers(6, 14)))
        voice = VOICES[i % len(VOICES)]
        audio = speak(" ".join(words), voice, int(rng.integers(130, 200)), int(rng.integers(25, 75)), exe)
        audio = 0.5 * audio / (audio.abs().max() + 1e-9)
        speech.append(audio)
        write_audio(root / "clean" / f"synth_{i:04d}_{voice.replace('+', '_')}.wav", audio, SAMPLE_RATE)
    if real_speech:
        for name, audio in real_speech_pieces():
            write_audio(root / "clean" / f"{name}.wav", audio, SAMPLE_RATE)
    seconds = 8
    samples = seconds * SAMPLE_RATE
    kinds = {
        "white": lambda: coloured_noise(rng, samples, 0.0),
        "pink": lambda: coloured_noise(rng, samples, 1.0),
        "brown": lambda: coloured_noise(rng, samples, 2.0),
        "hum": lambda: hum(rng, samples),
        "clicks": lambda: clicks(rng, samples),
        "babble": lambda: babble(rng, speech, samples),
    }
    for kind, make in kinds.items():
        for j in range(noises_per_kind):
            noise = make()
            write_audio(root / "noise" / f"{kind}_{j:02d}.wav", 0.3 * noise / (noise.abs().max() + 1e-9), SAMPLE_RATE)
    done.write_text(settings)
    return root


def babble(rng: np.random.Generator, speech: list[torch.Tensor], samples: int) -> torch.Tensor:
    """Several utterances at random offsets, summed: the sound of a crowd."""
    out = torch.zeros(samples)
    for _ in range(int(rng.integers(4, 8))):
        utt = speech[int(rng.integers(len(speech)))]
        start = int(rng.integers(0, samples))
        while start < samples:
            piece = utt[: samples - start]
            out[start : start + len(piece)] += piece * rng.uniform(0.5, 1.0)
            start += len(utt) + int(rng.integers(0, SAMPLE_RATE))
    return out / (out.std() + 1e-9)
