"""Audio files, corpora and simulated mixtures."""

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechnorm.data.audio_io import AudioFileError, read_audio, write_audio
from speechnorm.data.corpus import Corpus, scan, split_of
from speechnorm.data.dataset import BlockBatchSampler, SimulatedMixtures
from speechnorm.data.rooms import MixSpec, array_geometry, sample_array


@pytest.mark.parametrize(("name", "message"), [
    ("corrupt.wav", "cannot read audio"), ("empty.wav", "empty"), ("nan.wav", "NaN"),
    ("clipped.wav", "clipped"), ("lowrate.wav", "below 8000 Hz"),
])
def test_bad_files_are_refused_with_their_path(tiny_corpus, name, message):
    path = tiny_corpus / "clean" / "bad" / name
    with pytest.raises(AudioFileError, match=message) as err:
        read_audio(path)
    assert str(path) in str(err.value)


def test_read_resamples_and_round_trips(tmp_path, tiny_corpus):
    audio, rate = read_audio(tiny_corpus / "noise" / "noise0.wav", 16000)
    assert rate == 16000 and audio.shape == (1, round(24000 * 16000 / 22050))
    tone = 0.5 * torch.sin(torch.arange(1600) / 5.0)
    write_audio(tmp_path / "x.wav", tone, 16000)
    back, _ = read_audio(tmp_path / "x.wav")
    torch.testing.assert_close(back[0], tone, atol=1e-4, rtol=0)


def test_scan_reports_and_skips_bad_files(tiny_corpus, caplog):
    with caplog.at_level(logging.WARNING):
        files = scan(tiny_corpus / "clean")
    names = {f.name for f in files}
    assert {f"utt{i}.wav" for i in range(6)} <= names
    assert "corrupt.wav" not in names and "empty.wav" not in names and "lowrate.wav" not in names
    assert "corrupt.wav" in caplog.text and "empty.wav" in caplog.text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan(tiny_corpus / "nowhere")


def test_corpus_load_skips_files_that_fail_on_read(tiny_corpus, caplog):
    corpus = Corpus(tiny_corpus / "clean", tiny_corpus / "noise", "train")
    nan_index = next((i for i, f in enumerate(corpus.clean) if f.name in ("nan.wav", "clipped.wav")), None)
    assert nan_index is not None, "the NaN/clipped files pass the header check and must be caught on read"
    with caplog.at_level(logging.WARNING):
        audio = corpus.load("clean", nan_index)
    assert torch.isfinite(audio).all() and audio.abs().max() < 0.999
    assert "skipping" in caplog.text


def test_splits_are_disjoint_and_stable(tmp_path):
    from pathlib import Path

    names = [Path(f"utt_{i}.wav") for i in range(300)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in names]
    assert 0.7 < splits.count("train") / 300 < 0.9 and splits.count("val") and splits.count("test")


@pytest.mark.parametrize("kind", ["circular", "linear", "cluster"])
def test_array_geometries_have_the_promised_sizes(kind):
    rng = np.random.default_rng(0)
    for mics in (2, 5, 8):
        geometry = array_geometry(rng, kind, mics)
        assert geometry.shape == (3, mics)
        spread = np.linalg.norm(geometry[:, :, None] - geometry[:, None, :], axis=0).max()
        assert 0 < spread <= {"circular": 0.2, "linear": 0.05 * (mics - 1) + 1e-9, "cluster": 0.12 * np.sqrt(3)}[kind]


def test_unseen_geometries_never_appear_in_the_seen_pool():
    rng = np.random.default_rng(1)
    seen = {sample_array(rng, False, m)[0] for m in range(2, 7) for _ in range(20)}
    unseen = {sample_array(rng, True, m)[0] for m in range(2, 9) for _ in range(20)}
    assert seen == {"circular", "linear"} and "cluster" in unseen


def test_mixtures_are_seeded_blocked_and_sane(tiny_corpus):
    corpus = Corpus(tiny_corpus / "clean", tiny_corpus / "noise", "train")
    data = SimulatedMixtures(corpus, "train", size=6, seconds=0.5, seed=3, mic_block=3, spec=MixSpec(t60=(0.2, 0.3)))
    noisy, target = data[1]
    again, target_again = data[1]
    assert torch.equal(noisy, again) and torch.equal(target, target_again)
    assert noisy.shape == (data.mics(1), 8000) and target.shape == (8000,)
    assert data.mics(0) == data.mics(2)  # one block, one mic count
    assert torch.isfinite(noisy).all() and 0.2 < noisy.abs().max() <= 0.9 + 1e-6
    other = SimulatedMixtures(corpus, "train", size=6, seconds=0.5, seed=4, mic_block=3)
    assert not torch.equal(other[1][1], target)
    with pytest.raises(IndexError):
        data[6]


def test_item_cache_returns_the_same_item(tiny_corpus, tmp_path):
    corpus = Corpus(tiny_corpus / "clean", tiny_corpus / "noise", "val")
    data = SimulatedMixtures(corpus, "val", size=2, seconds=0.25, seed=0, mic_block=2, cache_dir=tmp_path)
    first = data[0]
    assert any(tmp_path.rglob("000000.pt"))
    assert all(torch.equal(a, b) for a, b in zip(first, data[0]))
    louder = SimulatedMixtures(corpus, "val", size=2, seconds=0.25, seed=0, mic_block=2, cache_dir=tmp_path,
                               spec=MixSpec(snr_db=(30.0, 30.0)))
    assert louder.cache != data.cache, "another mix setting must not read this cache"


def test_block_batch_sampler_keeps_blocks_whole():
    sampler = BlockBatchSampler(10, 4, shuffle=True, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(b == list(range(b[0], b[0] + len(b))) and b[0] % 4 == 0 for b in batches)
    sampler.set_epoch(1)
    assert len(list(sampler)) == 3


def test_synthetic_corpus_builds(tmp_path):
    from speechnorm.data import synthetic

    if synthetic.shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make system-deps)")
    root = synthetic.build(tmp_path / "synth", utterances=2, noises_per_kind=1, real_speech=False)
    clean = sorted((root / "clean").glob("*.wav"))
    noises = sorted((root / "noise").glob("*.wav"))
    assert len(clean) == 2 and len(noises) == 6
    for path in clean + noises:
        audio, rate = read_audio(path)
        assert rate == 16000 and audio.shape[1] > 8000
    assert sf.info(str(clean[0])).samplerate == 16000
    # other settings rebuild the folder: now with the real conversation's pieces, and nothing stale
    root = synthetic.build(tmp_path / "synth", utterances=1, noises_per_kind=1, real_speech=True)
    names = sorted(p.stem for p in (root / "clean").glob("*.wav"))
    assert len([n for n in names if n.startswith("synth_")]) == 1 and any(n.startswith("real_") for n in names)


def test_real_speech_pieces_come_from_after_the_held_out_start_and_keep_their_split():
    from speechnorm.assets import REAL_SPEECH
    from speechnorm.data.corpus import split_of
    from speechnorm.data.synthetic import HELD_OUT_SECONDS, real_speech_pieces

    recording = read_audio(REAL_SPEECH)[0][0].numpy()
    pieces = real_speech_pieces()
    originals = [(name, audio.numpy()) for name, audio in pieces if name.endswith("__s1.0")]
    assert len(pieces) == 3 * len(originals) >= 3
    for name, audio in originals:  # find where each unperturbed piece lies in the recording
        head = audio[:400] / np.abs(audio[:400]).max()
        scores = np.correlate(recording, head, mode="valid") / (np.sqrt(np.convolve(recording**2, np.ones(400), "valid")) + 1e-9)
        assert np.argmax(scores) >= HELD_OUT_SECONDS * 16000 - 1, name
    for name, _ in pieces:
        stem = name.split("__")[0]
        assert {split_of(Path(f"{stem}__s{s}.wav")) for s in ("0.9", "1.0", "1.1")} == {split_of(Path(name + ".wav"))}


def test_large_rooms_with_short_t60_are_simulated_not_refused():
    from speechnorm.data.rooms import shortest_t60, simulate

    rng = np.random.default_rng(0)
    spec = MixSpec(t60=(0.05, 0.06))  # drier than any big room can be
    for _ in range(5):
        noisy, target = simulate(rng, torch.randn(4000) * 0.1, [torch.randn(4000)], array_geometry(rng, "linear", 3), spec)
        assert torch.isfinite(noisy).all() and noisy.shape == (3, 4000)
    volume, surface = 320.0, 2 * (80.0 + 40.0 + 32.0)  # Sabine: T60 = 0.161 V / (S a)
    assert abs(shortest_t60(np.array([10.0, 8.0, 4.0])) - 0.161 * volume / (surface * 0.95)) < 1e-3


def test_measured_rirs_are_used_and_give_a_known_target(tiny_corpus, tmp_path):
    """A measured 'room' whose responses are pure delays: the target is the speech delayed by
    mic 0's delay, and the mixture's mic 1 lags mic 0 by the known inter-mic delay."""
    room = tmp_path / "rirs" / "room_a"
    room.mkdir(parents=True)
    for position, (d0, d1) in enumerate([(10, 13), (40, 35), (70, 71)]):
        rir = np.zeros((400, 3), dtype=np.float32)
        rir[d0, 0], rir[d1, 1], rir[d0 + 5, 2] = 1.0, 1.0, 0.5
        sf.write(room / f"pos{position}.wav", rir, 16000, subtype="FLOAT")
    (tmp_path / "rirs" / "lonely").mkdir()
    sf.write(tmp_path / "rirs" / "lonely" / "only.wav", np.zeros((100, 2), dtype=np.float32), 16000)
    corpus = Corpus(tiny_corpus / "clean", tiny_corpus / "noise", "train", rir_dir=tmp_path / "rirs")
    assert [(f.name, m) for f, m in corpus.rooms] == [("room_a", 3)]
    data = SimulatedMixtures(corpus, "train", size=8, seconds=0.25, seed=0, mic_block=1, measured_fraction=1.0,
                             spec=MixSpec(snr_db=(60.0, 60.0)))  # noise far below the speech
    measured = [i for i in range(8) if data.mics(i) <= 3]
    assert measured, "some items should fit the 3-mic room"
    for i in measured:
        noisy, target = data[i]
        assert noisy.shape[0] == data.mics(i)
        # pure delays: mic 0 *is* the target (no reverberation; noise 60 dB down), unlike any simulated room
        torch.testing.assert_close(noisy[0], target, atol=3e-3 * target.abs().max().item(), rtol=0)
        if noisy.shape[0] > 1:
            lag = int(np.argmax(np.correlate(noisy[1].numpy(), noisy[0].numpy(), "full"))) - (noisy.shape[1] - 1)
            assert lag in (3, -5, 1), lag  # d1 - d0 of one of the three positions
