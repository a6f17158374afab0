"""The corpus pack: what goes in comes out (lengths exact, waveforms near-transparent), the budget
holds, and a damaged or foreign pack is refused by name."""

import json

import numpy as np
import pytest
import soundfile as sf

from speechnorm.data import pack

FS = 16_000


def test_round_trip_keeps_lengths_labels_and_the_waveform(pack_corpus, tmp_path):
    corpus = pack_corpus
    done = pack.write(tmp_path / "pack", corpus / "speech", corpus / "noise")
    assert done["speech"]["entries"] == 3  # u1 was screened out of training, u4 is a test utterance
    with pytest.raises(pack.PackError, match="no speech of split 'test'"):
        pack.read(tmp_path / "pack", "test")
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


def test_budget_cuts_noise_then_speech(pack_corpus, tmp_path):
    corpus = pack_corpus
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
def test_damaged_or_foreign_packs_are_refused_by_name(pack_corpus, tmp_path, damage, message):
    corpus = pack_corpus
    pack.write(tmp_path / "pack", corpus / "speech", corpus / "noise")
    damage(tmp_path / "pack")
    with pytest.raises(pack.PackError, match=message):
        pack.read(tmp_path / "pack", "train")
