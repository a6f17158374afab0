"""Speaker enrollment (``speechnorm.speaker``): the pretrained encoder tells the two real speakers
of the bundled conversation apart (its RTTM turns are the truth), the embedding does not depend on
level, and bad enrollment is refused with the reason."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechnorm import speaker

pytestmark = pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None,
                                reason="the speaker encoder's weights are not installed (make venv installs them)")
CONVERSATION = Path(speaker.__file__).parent / "assets" / "real_speech" / "conversation.flac"
# stretches where one speaker talks alone (conversation.rttm): speaker90 (A), speaker91 (B)
TURNS = {"A1": (10.6, 14.45), "A2": (18.6, 21.45), "B1": (14.75, 17.9), "B2": (21.8, 27.8)}


@pytest.fixture(scope="module")
def audio():
    wav, rate = sf.read(CONVERSATION, dtype="float32")
    return wav, rate


def clip(audio, name):
    wav, rate = audio
    start, end = TURNS[name]
    return wav[int(start * rate): int(end * rate)]


@pytest.fixture(scope="module")
def embeddings(audio):
    return {name: speaker.embed(clip(audio, name), audio[1])[0] for name in TURNS}


def test_same_speaker_is_closer_than_the_other(embeddings):
    sim = speaker.similarity
    for a, b in (("A1", "A2"), ("B1", "B2")):
        same = sim(embeddings[a], embeddings[b])
        for other in ("B1", "B2") if a.startswith("A") else ("A1", "A2"):
            assert same > sim(embeddings[a], embeddings[other]) + 0.05, (a, b, other)
            assert same > sim(embeddings[b], embeddings[other]) + 0.05, (a, b, other)


def test_embedding_is_a_unit_vector_independent_of_level_and_rate(audio, embeddings):
    e = embeddings["A1"]
    assert e.shape == (256,) and e.dtype == np.float32 and abs(np.linalg.norm(e) - 1) < 1e-5
    quiet, info = speaker.embed(clip(audio, "A1") * 0.05, audio[1])
    assert speaker.similarity(quiet, e) > 0.999 and info.partials >= 2
    from speechnorm.data.resample import resample

    at_48k = resample(clip(audio, "A1")[None], 16000, 48000)[0]
    upsampled, info = speaker.embed(np.stack([at_48k, at_48k * 0.5]), 48000)  # stereo: channel 0
    assert info.source_rate == 48000 and speaker.similarity(upsampled, e) > 0.98


@pytest.mark.parametrize(("case", "message"), [
    ("silence", "silent"), ("noise", "of speech"), ("short", "of speech"), ("8k", "at least 16000 Hz"),
    ("nan", "NaN"), ("int", "floating point"), ("long", "at most 120 s")])
def test_bad_enrollment_is_refused_with_the_reason(audio, case, message):
    rng = np.random.default_rng(0)
    rate = 16000
    wav = {"silence": lambda: np.zeros(5 * rate, np.float32),
           "noise": lambda: (rng.standard_normal(5 * rate) * 0.1).astype(np.float32),
           "short": lambda: clip(audio, "A1")[: int(1.2 * rate)],
           "8k": lambda: clip(audio, "A1")[::2],
           "nan": lambda: np.full(rate * 3, np.nan, np.float32),
           "int": lambda: (clip(audio, "A1") * 3e4).astype(np.int16),
           "long": lambda: np.tile(clip(audio, "A1"), 40)}[case]()
    with pytest.raises(speaker.EnrollmentError, match=message):
        speaker.embed(wav, 8000 if case == "8k" else rate)


def test_enroll_command(tmp_path, audio):
    good, silent = tmp_path / "me.wav", tmp_path / "silent.wav"
    sf.write(good, clip(audio, "B2"), audio[1])
    sf.write(silent, np.zeros(3 * audio[1], np.float32), audio[1])
    run = [sys.executable, "-m", "speechnorm", "enroll"]
    done = subprocess.run(run + [str(good), "-o", str(tmp_path / "me.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    saved = np.load(tmp_path / "me.npy")
    assert saved.shape == (256,) and speaker.similarity(saved, speaker.embed(clip(audio, "B2"), audio[1])[0]) > 0.9999
    done = subprocess.run(run + [str(silent), "-o", str(tmp_path / "x.npy")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "silent" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.npy").exists()
