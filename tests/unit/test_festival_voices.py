"""Festival voices as extra training speakers: spoken, written once, refused clearly when missing,
and adopted into the corpus as training speakers with their package and licence."""

import importlib.util
import logging
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from speechnorm.data import festival, packages
from speechnorm.data.corpus import Corpus

KAL = festival.VOICES[0]
assert KAL.name == "kal_diphone"


def _kal_installed() -> bool:
    if shutil.which("text2wave") is None or shutil.which("dpkg-query") is None:
        return False
    return subprocess.run(["dpkg-query", "-W", KAL.package], capture_output=True).returncode == 0


needs_kal = pytest.mark.skipif(not _kal_installed(), reason="festival and festvox-kallpc16k are not installed "
                                                            "(make test installs them)")
BOGUS = festival.Voice("festvox-no-such-voice", "no_such_voice", "en", "none")


def test_missing_festival_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(festival.shutil, "which", lambda name: None)
    with pytest.raises(festival.FestivalError, match="apt-get install -y festival festvox-kallpc16k"):
        festival.build(tmp_path / "v", utterances=1)


@needs_kal
def test_a_voice_speaks_is_written_once_and_a_missing_one_is_skipped(tmp_path, caplog):
    root = tmp_path / "voices"
    with caplog.at_level(logging.WARNING):
        festival.build(root, utterances=2, voices=(KAL, BOGUS))
    assert "apt-get install -y festvox-no-such-voice" in caplog.text
    files = sorted(root.glob("*.wav"))
    assert [f.name for f in files] == ["kal_diphone_000.wav", "kal_diphone_001.wav"]
    for path in files:
        audio, rate = sf.read(path)
        assert rate == 16000 and len(audio) > 16000 and np.abs(audio).max() == pytest.approx(0.5, abs=0.01)
        # speech: loud syllables and quiet gaps, not a constant tone or noise
        frames = audio[: len(audio) // 320 * 320].reshape(-1, 320)
        level = 10 * np.log10(frames.var(axis=1) + 1e-12)
        assert np.percentile(level, 90) - np.percentile(level, 10) > 20
    voices = festival.voices_of(root)
    assert list(voices) == ["kal_diphone"] and voices["kal_diphone"]["version"] == festival.package_version(KAL.package) != ""
    stamp = files[0].stat().st_mtime_ns
    festival.build(root, utterances=2, voices=(KAL, BOGUS))  # the same settings: nothing is spoken again
    assert files[0].stat().st_mtime_ns == stamp
    with pytest.raises(festival.FestivalError, match="no Festival voice could speak"):
        festival.build(tmp_path / "none", utterances=1, voices=(BOGUS,))
    # a failed rebuild leaves the last good build in place
    with pytest.raises(festival.FestivalError, match="no Festival voice could speak"):
        festival.build(root, utterances=1, voices=(BOGUS,))
    assert sorted(root.glob("*.wav")) == files and not (tmp_path / "voices.partial").exists()
    # a voice skipped then installed since: the build is made again (here it is still missing)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        real_version = festival.package_version
        festival.package_version = lambda package: "1.0" if package == BOGUS.package else real_version(package)
        try:
            festival.build(root, utterances=2, voices=(KAL, BOGUS))
        finally:
            festival.package_version = real_version
    assert "installed since the last build (festvox-no-such-voice)" in caplog.text
    # a folder that is not a Festival build is never wiped
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(festival.FestivalError, match="not a Festival build"):
        festival.build(other, utterances=1, voices=(KAL,))
    assert (other / "keep.txt").read_text() == "mine"
    # adopted into a corpus: training speaker festival:NAME with its package, version and licence
    corpus_root = tmp_path / "corpus"
    rows = packages.adopt_festival(corpus_root, root)
    packages._write_manifest(corpus_root / "speech" / "manifest.csv", rows)
    assert {(r["speaker"], r["package"], r["licence"], r["split"]) for r in rows} == \
        {("festival:kal_diphone", KAL.package, KAL.licence, "train")}
    (corpus_root / "noise").mkdir()
    sf.write(corpus_root / "noise" / "n.wav", np.zeros(1600, np.float32) + 0.01, 16000)
    corpus = Corpus(corpus_root / "speech", corpus_root / "noise", "train")
    assert {corpus.speaker(p) for p in corpus.clean} == {"festival:kal_diphone"} and len(corpus.clean) == 2


@needs_kal
@pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None, reason="the speaker encoder's weights are not installed")
def test_a_festival_voice_is_one_voice_to_the_speaker_encoder(tmp_path):
    """Two sentences of one Festival voice enroll as the same speaker: the encoder scores them as
    alike as two utterances of one real person (0.7 or more; different people score ~0.4-0.6)."""
    from speechnorm.speaker import embed_file, similarity

    root = festival.build(tmp_path / "voices", utterances=2, voices=(KAL,))
    a, b = (embed_file(p)[0] for p in sorted(root.glob("*.wav")))
    assert similarity(a, b) > 0.7
