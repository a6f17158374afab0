"""The corpus pack: what goes in comes out (lengths exact, waveforms near-transparent), the budget
holds, and a damaged or foreign pack is refused by name."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from speechnorm.data import pack

FS = 16_000
FIELDS = ["file", "kind", "speaker", "language", "package", "version", "licence", "seconds", "split"]


def _voice(seconds, f0, seed):
    t = np.arange(int(seconds * FS)) / FS
    harmonics = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 30) if k * f0 < 7500)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed)
    return (0.3 * harmonics / np.abs(harmonics).max() * envelope).astype(np.float32)


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    for kind in ("speech", "noise"):
        (root / kind).mkdir(parents=True)
    rows = {"speech": [], "noise": []}
    for i, (split, speaker) in enumerate([("train", "a"), ("train", "b"), ("train", "a"), ("val", "c"), ("test", "d")]):
        sf.write(root / "speech" / f"u{i}.flac", _voice(1.5 + 0.25 * i, 110 + 30 * i, i), FS)
        rows["speech"].append({"file": f"u{i}.flac", "kind": "speech", "speaker": speaker, "language": "xx",
                               "package": "pkg", "version": "1", "licence": "CC0", "seconds": 1.5 + 0.25 * i, "split": split})
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(root / "noise" / f"n{i}.flac", (0.05 * rng.standard_normal(2 * FS)).astype(np.float32), FS)
        rows["noise"].append({"file": f"n{i}.flac", "kind": "noise", "speaker": "", "language": "", "package": "pkg",
                              "version": "1", "licence": "CC0", "seconds": 2.0, "split": ["train", "val", "test"][i]})
    for kind, kind_rows in rows.items():
        with open(root / kind / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(kind_rows)
    with open(root / "speech" / "screen.csv", "w", newline="") as handle:
        handle.write("file,kept,reason\nu0.flac,1,\nu1.flac,0,dnsmos_ovrl\nu2.flac,1,\nu3.flac,1,\nu4.flac,1,\n")
    return root


def test_round_trip_keeps_lengths_labels_and_the_waveform(corpus, tmp_path):
    done = pack.write(tmp_path / "pack", corpus / "speech", corpus / "noise")
    assert done["speech"]["entries"] == 4  # u1 was screened out of training
    speech, noise = pack.read(tmp_path / "pack", "train")
    assert speech.labels == ["a", "a"] and noise.labels == ["recorded"]
    for file, index in (("u0.flac", 0), ("u2.flac", 1)):
        original = sf.read(corpus / "speech" / file, dtype="float32")[0]
        decoded = speech.audio[speech.starts[index] : speech.starts[index] + speech.lengths[index]].numpy()
        assert len(decoded) == len(original)
        error = 10 * np.log10(np.sum(original**2) / np.sum((decoded - original) ** 2))
        assert error > 12, error  # Opus at ~31 kbit/s: near-transparent, not bit-exact
    val, _ = pack.read(tmp_path / "pack", "val")
    assert val.labels == ["c"]
    meta = json.loads((tmp_path / "pack" / "pack.json").read_text())
    assert {e["licence"] for e in meta["entries"]} == {"CC0"}


def test_budget_cuts_noise_then_speech(corpus, tmp_path):
    full = pack.write(tmp_path / "full", corpus / "speech", corpus / "noise")
    small = pack.write(tmp_path / "small", corpus / "speech", corpus / "noise", budget_mib=(full["speech"]["bytes"] + 2000) / 2**20)
    assert small["bytes"] <= full["speech"]["bytes"] + 2000
    assert small["speech"]["entries"] == full["speech"]["entries"] and small["noise"]["entries"] < full["noise"]["entries"]


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "pack.json").unlink(), "no corpus pack"),
    (lambda p: (p / "pack.json").write_text(json.dumps({**json.loads((p / "pack.json").read_text()), "version": 7})),
     "pack version 7"),
    (lambda p: (p / "pack.json").write_text(json.dumps({**json.loads((p / "pack.json").read_text()), "sample_rate": 8000})),
     "at 8000 Hz"),
    (lambda p: (p / "speech-000.ogg").write_bytes(b"OggS" + b"\0" * 100), r"speech-000.ogg: cannot be decoded"),
])
def test_damaged_or_foreign_packs_are_refused_by_name(corpus, tmp_path, damage, message):
    pack.write(tmp_path / "pack", corpus / "speech", corpus / "noise")
    damage(tmp_path / "pack")
    with pytest.raises(pack.PackError, match=message):
        pack.read(tmp_path / "pack", "train")
