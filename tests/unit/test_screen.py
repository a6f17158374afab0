"""The speech screen: its measures on known signals, its groups, its decisions and their use."""

import csv

import numpy as np
import pytest
import soundfile as sf

from speechnorm.data import screen
from speechnorm.data.corpus import Corpus

FS = 16_000


def _voice(seconds=2.0, seed=0):
    """A voiced, syllable-modulated harmonic signal with pauses: speech-like levels."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * FS)) / FS
    harmonics = sum(np.sin(2 * np.pi * k * 140 * t + rng.uniform(0, 6)) / k for k in range(1, 40) if k * 140 < 7800)
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None)
    return 0.3 * harmonics / np.abs(harmonics).max() * envelope


def test_noise_floor_is_the_quiet_frames_under_the_loud_ones():
    voice = _voice()
    quiet = screen.measures(voice + 1e-4 * np.random.default_rng(1).standard_normal(len(voice)))
    noisy = screen.measures(voice + 1e-2 * np.random.default_rng(1).standard_normal(len(voice)))
    assert quiet["noise_floor_db"] < -50 and -35 < noisy["noise_floor_db"] < -10
    assert noisy["noise_floor_db"] - quiet["noise_floor_db"] > 30  # 40 dB more noise, floor ~40 dB up


def test_clipping_counts_flat_tops():
    voice = _voice()
    assert screen.measures(voice)["clip_fraction"] < 0.002  # a handful of samples near the peak
    clipped = np.clip(voice * 4, -0.3, 0.3)  # the loud half of each syllable is cut flat
    assert screen.measures(clipped)["clip_fraction"] > 0.05


def test_high_band_tells_a_telephone_band_recording():
    voice = _voice()
    spectrum = np.fft.rfft(voice)
    spectrum[np.fft.rfftfreq(len(voice), 1 / FS) > 3800] = 0
    narrow = np.fft.irfft(spectrum, n=len(voice))
    assert screen.measures(voice)["high_band_db"] > -30
    assert screen.measures(narrow)["high_band_db"] < -60
    with pytest.raises(ValueError, match="too short"):
        screen.measures(np.zeros(100))


def test_groups_join_one_speakers_utterances_to_about_nine_seconds():
    rows = [{"file": f"a{i}", "speaker": "a", "seconds": "2.0"} for i in range(7)] + \
           [{"file": "b0", "speaker": "b", "seconds": "12.0"}, {"file": "b1", "speaker": "b", "seconds": "1.0"}]
    got = [[r["file"] for r in g] for g in screen.groups(rows)]
    assert got == [["a0", "a1", "a2", "a3", "a4"], ["a5", "a6"], ["b0"], ["b1"]]


def test_decisions_reach_the_training_corpus(tmp_path):
    speech, noise = tmp_path / "speech", tmp_path / "noise"
    speech.mkdir(), noise.mkdir()
    rows = []
    for i in range(4):
        sf.write(speech / f"u{i}.flac", _voice(seed=i).astype(np.float32), FS)
        rows.append({"file": f"u{i}.flac", "kind": "speech", "speaker": f"s{i % 2}", "language": "", "package": "p",
                     "version": "1", "licence": "x", "seconds": "2.0", "split": "train"})
    sf.write(noise / "n.flac", (0.1 * np.random.default_rng(0).standard_normal(FS)).astype(np.float32), FS)
    with open(speech / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(FileNotFoundError, match="run `speechnorm screen"):
        Corpus(speech, noise, "train", screened=True)
    with open(speech / "screen-measures.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=screen.CHEAP_FIELDS)
        writer.writeheader()
        for i in range(4):  # u3 is clipped: never DNSMOS-scored
            writer.writerow({"file": f"u{i}.flac", "noise_floor_db": -50, "clip_fraction": 0.01 if i == 3 else 0,
                             "high_band_db": -20})
    with open(speech / "screen-dnsmos.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=screen.DNSMOS_FIELDS)
        writer.writeheader()
        for i, ovrl in enumerate([3.1, 2.2]):  # u2 passes the cheap floors but is not scored yet: not kept
            writer.writerow({"file": f"u{i}.flac", "group": "g", "dnsmos_sig": 3.5, "dnsmos_bak": 4.0, "dnsmos_ovrl": ovrl})
    decisions = screen.decide(speech)
    assert [d["reason"] for d in decisions.values()] == ["", "dnsmos_ovrl", "unscored", "clip_fraction"]
    corpus = Corpus(speech, noise, "train", screened=True)
    assert [p.name for p in corpus.clean] == ["u0.flac"]
    assert "| train | p | 0.00 | 0.00 | 2 | 1 | 3.10 |" in screen.report(decisions)


def test_clean_target_set_keeps_utterances_scored_clean_dry(tmp_path):
    speech, noise = tmp_path / "speech", tmp_path / "noise"
    speech.mkdir(), noise.mkdir()
    for i in range(3):
        sf.write(speech / f"t{i}.flac", _voice(seed=i).astype(np.float32), FS)
    sf.write(noise / "n.flac", (0.1 * np.random.default_rng(0).standard_normal(FS)).astype(np.float32), FS)
    with open(speech / "screen-dnsmos.csv", "w", newline="") as handle:
        handle.write("file,group,dnsmos_sig,dnsmos_bak,dnsmos_ovrl\nt0.flac,g,3,4,2.95\nt1.flac,g,3,4,2.5\n")
    corpus = Corpus(speech, noise, "test", min_dry_ovrl=2.8)
    assert [p.name for p in corpus.clean] == ["t0.flac"]  # t1 below, t2 never scored
    with pytest.raises(ValueError, match="no test utterance .* of 3.5 or more"):
        Corpus(speech, noise, "test", min_dry_ovrl=3.5)
