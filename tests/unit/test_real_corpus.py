"""The package-built corpus (``speechnorm data``) and the realistic rooms: utterance cutting on a
known signal, whole-speaker splits, every kind of bad input reported by path and skipped, the
late tail's T60 by Schroeder integration, diffuse-field coherence, evaluation items independent
of the batch size."""

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechnorm.data import packages
from speechnorm.data.corpus import Corpus, read_manifest
from speechnorm.data.rooms import SAMPLE_RATE, MixSpec, array_geometry, diffuse_noise, simulate

RATE = 22050


def burst(seconds: float, rate: int = RATE, f0: float = 150.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))).astype(np.float32)


def test_speech_is_cut_at_pauses_and_trimmed():
    silence = np.zeros(int(0.7 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([silence, burst(1.5, SAMPLE_RATE), silence, burst(2.0, SAMPLE_RATE), silence,
                            burst(0.4, SAMPLE_RATE), silence])
    pieces = packages.segments(audio, "x.wav")
    # two utterances (the 0.4 s one is too short), each trimmed to its speech plus 0.1 s margins
    assert [round(len(p) / SAMPLE_RATE, 1) for p in pieces] == [1.7, 2.2]
    with pytest.raises(packages.CorpusInputError, match="x.wav: silence only"):
        packages.segments(np.zeros(SAMPLE_RATE, np.float32), "x.wav")


def make_deb(folder, package: str, files: dict) -> None:
    """A real .deb (dpkg-deb --build) holding ``files`` {path inside: bytes or (audio, rate)}."""
    tree = folder / f"tree-{package}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.2-3\nArchitecture: all\n"
                                             "Maintainer: test <t@example.org>\nDescription: test data\n")
    for inside, content in files.items():
        path = tree / inside
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            sf.write(str(path), content[0], content[1])
    subprocess.run(["dpkg-deb", "--build", str(tree), str(folder / f"{package}_1.2-3_all.deb")], check=True,
                   capture_output=True)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_build_holds_out_whole_speakers_and_reports_bad_input(tmp_path, monkeypatch, caplog):
    debs = tmp_path / "cache" / "debs"
    debs.mkdir(parents=True)
    pause = np.zeros(int(0.8 * RATE), np.float32)
    speech = {f"voices/{who}/{i}.wav": (np.concatenate([burst(1.5, f0=f0), pause, burst(1.2, f0=f0)]), RATE)
              for who, f0 in (("anna", 220.0), ("bert", 120.0)) for i in range(3)}
    make_deb(debs, "voices-a", {**speech,
                                "voices/anna/broken.wav": b"RIFF not really audio",
                                "voices/anna/quiet.wav": (np.zeros(RATE, np.float32), RATE),
                                "voices/bert/phone.wav": (burst(2.0, rate=8000), 8000)})
    make_deb(debs, "voices-b", {"voices/anna/other.wav": (burst(2.0), RATE)})
    make_deb(debs, "hum-c", {"noise/hum.wav": (burst(25.0, f0=50.0), RATE)})

    def voices(root, others):
        for path in sorted((root / "voices").rglob("*.wav")):
            yield path, f"test:{path.parent.name}", "xx"

    sources = [packages.Source("voices-a", "CC0", "speech", voices),
               packages.Source("voices-b", "CC0", "speech", voices),  # claims "test:anna" for another voice
               packages.Source("speechnorm-no-such-package", "CC0", "speech", voices),
               packages.Source("hum-c", "CC0", "noise", packages.noise_files("noise"))]
    monkeypatch.setattr(packages, "HELD_OUT", {"test:bert": "test"})
    with caplog.at_level(logging.WARNING):
        root = packages.build(tmp_path / "corpus", cache=tmp_path / "cache", sources=sources)
    log = caplog.text
    assert "could not fetch package speechnorm-no-such-package" in log  # and the build went on
    for name, why in (("broken.wav", "cannot decode"), ("quiet.wav", "silence only"),
                      ("phone.wav", "8000 Hz is below 16000"), ("other.wav", "speaker id test:anna is already used")):
        assert any(name in r.getMessage() and why in r.getMessage() for r in caplog.records), (name, log)

    rows = list(read_manifest(root / "speech").values())
    assert {r["speaker"] for r in rows} == {"test:anna", "test:bert"}
    assert len(rows) == 12  # 6 files, each cut at its pause into 2 utterances
    assert {r["split"] for r in rows if r["speaker"] == "test:bert"} == {"test"}
    assert {r["split"] for r in rows if r["speaker"] == "test:anna"} == {"train"}
    assert {(r["package"], r["version"], r["licence"]) for r in rows} == {("voices-a", "1.2-3", "CC0")}
    noise = list(read_manifest(root / "noise").values())
    assert len(noise) == 3 and {r["split"] for r in noise} == {noise[0]["split"]}  # one recording, one split
    assert sf.info(str(root / "speech" / rows[0]["file"])).samplerate == SAMPLE_RATE

    train, test = Corpus(root / "speech", root / "noise", "train"), Corpus(root / "speech", root / "noise", "test")
    assert {train.speaker(p) for p in train.clean} == {"test:anna"} and {test.speaker(p) for p in test.clean} == {"test:bert"}
    assert train.noise_by_kind["recorded"] == train.noise  # real recordings, none generated


def schroeder_t60(rir: np.ndarray) -> float:
    """T60 from the -5..-25 dB span of the Schroeder energy decay curve (T20 x 3)."""
    energy = np.cumsum(rir[::-1] ** 2)[::-1]
    decay = 10 * np.log10(energy / energy[0] + 1e-30)
    return (np.argmax(decay < -25) - np.argmax(decay < -5)) / SAMPLE_RATE * 3


@pytest.mark.parametrize("t60", [0.4, 0.8])
def test_rooms_with_late_reverb_decay_at_the_drawn_t60(t60, monkeypatch):
    import speechnorm.data.rooms as rooms

    captured = []
    original = rooms.mix
    monkeypatch.setattr(rooms, "mix", lambda rng, s, n, target_rir, *a, **k: captured.append(target_rir) or original(
        rng, s, n, target_rir, *a, **k))
    rng = np.random.default_rng(0)
    measured = []
    for _ in range(3):
        simulate(rng, torch.randn(8000) * 0.1, [torch.randn(8000)], array_geometry(rng, "circular", 3),
                 MixSpec(late_reverb=True, distance=(1.0, 2.0)), t60=t60)
        measured.append(schroeder_t60(captured[-1][0].numpy()))
    assert abs(np.median(measured) - t60) < 0.15 * t60, measured
    # without the tail the image sources (order <= 12) decay far sooner than a 0.8 s room does
    simulate(rng, torch.randn(8000) * 0.1, [torch.randn(8000)], array_geometry(rng, "circular", 3), MixSpec(), t60=t60)
    if t60 >= 0.8:
        assert schroeder_t60(captured[-1][0].numpy()) < 0.6 * t60


def test_diffuse_tail_has_the_diffuse_field_coherence():
    geometry = np.array([[0.0, 0.05], [0.0, 0.0], [0.0, 0.0]])  # two mics 5 cm apart
    noise = diffuse_noise(np.random.default_rng(0), geometry, 16000 * 40)
    frames = noise[:, : 16000 * 40 // 512 * 512].reshape(2, -1, 512)
    spectra = np.fft.rfft(frames * np.hanning(512), axis=2)
    cross = np.mean(spectra[0] * spectra[1].conj(), axis=0)
    coherence = cross.real / np.sqrt(np.mean(abs(spectra[0]) ** 2, 0) * np.mean(abs(spectra[1]) ** 2, 0))
    freqs = np.fft.rfftfreq(512, 1 / 16000)
    expected = np.sinc(2 * freqs * 0.05 / 343)
    band = (freqs > 200) & (freqs < 6000)
    assert np.max(np.abs(coherence[band] - expected[band])) < 0.12


def test_evaluation_items_do_not_depend_on_the_batch_size(tiny_corpus):
    from speechnorm.data.datamodule import EnhancementDataModule

    def items(batch_size):
        data = EnhancementDataModule(clean_dir=str(tiny_corpus / "clean"), noise_dir=str(tiny_corpus / "noise"),
                                     train_items=8, val_items=4, test_items=5, seconds=0.5, batch_size=batch_size)
        data.setup()
        return [(data.datasets[split][i], data.datasets[split].plan(i)) for split in ("val", "test", "test_unseen")
                for i in range(4)]

    for (a, plan_a), (b, plan_b) in zip(items(2), items(4)):
        assert plan_a == plan_b and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_per_condition_means_group_the_clips_by_each_factor():
    from speechnorm.evaluate import METRICS, per_condition, t60_band

    rows = []
    for i, (noise, t60, mics) in enumerate([("babble", 0.3, 4), ("babble", 0.9, 4), ("talker", 0.9, 8)]):
        row = {"noise": noise, "t60_band": t60_band(t60), "mics": mics}
        row.update({f"{who}/{m}": float(i + (10 if who == "enhanced" else 0)) for who in ("noisy", "enhanced") for m in METRICS})
        rows.append(row)
    table = {(r["grouping"], r["condition"]): r for r in per_condition(rows)}
    assert table[("noise", "babble")]["clips"] == 2 and table[("noise", "babble")]["enhanced/si_sdr"] == 10.5
    assert table[("noise", "talker")]["noisy/pesq"] == 2.0
    assert table[("T60", "T60>=0.7s")]["clips"] == 2 and table[("mics", "8")]["clips"] == 1
    assert table[("noise x T60 x mics", "babble / T60<0.4s / 4")]["enhanced/stoi"] == 10.0


def test_quality_floor_screens_training_speech_only(tiny_corpus, tmp_path, caplog):
    """A DNSMOS floor drops the scored training utterances below it, keeps the unscored ones, and
    leaves validation and test speech alone; scores merge over shard files, a malformed row is
    reported and skipped; a floor without scores, with an unknown key or leaving nothing is refused."""
    from speechnorm.data.corpus import read_quality, screen
    from speechnorm.data.datamodule import EnhancementDataModule

    clean = tmp_path / "clean"
    shutil.copytree(tiny_corpus / "clean", clean)
    header = "file,dnsmos_sig,dnsmos_bak,dnsmos_ovrl\n"
    (clean / "quality-0of2.csv").write_text(header + "utt0.wav,3.5,3.9,3.1\nutt1.wav,2.0,1.5,1.4\nutt2.wav,x,y,z\n")
    (clean / "quality-1of2.csv").write_text(header + "utt3.wav,3.4,2.9,2.6\n")
    with caplog.at_level(logging.WARNING):
        scores = read_quality(clean)
    assert sorted(Path(p).name for p in scores) == ["utt0.wav", "utt1.wav", "utt3.wav"]
    assert scores[str((clean / "utt3.wav").resolve())] == {"dnsmos_sig": 3.4, "dnsmos_bak": 2.9, "dnsmos_ovrl": 2.6}
    assert "malformed" in caplog.text and "utt2.wav" in caplog.text

    def corpora(floor):
        data = EnhancementDataModule(clean_dir=str(clean), noise_dir=str(tiny_corpus / "noise"), train_items=2,
                                     val_items=2, test_items=2, seconds=0.5, speech_quality_floor=floor)
        data.setup()
        return {split: {p.name for p in data.datasets[split].corpus.clean} for split in ("train", "val", "test")}

    plain, screened = corpora(None), corpora({"dnsmos_bak": 3.0})
    assert {"utt1.wav", "utt2.wav", "utt3.wav"} <= plain["train"]  # (the split of each name is a fixed hash)
    assert screened["train"] == plain["train"] - {"utt1.wav", "utt3.wav"}  # BAK 1.5 and 2.9: below 3.0
    assert "utt2.wav" in screened["train"]  # unscored (its row is malformed): kept
    assert screened["val"] == plain["val"] and screened["test"] == plain["test"]
    both = corpora({"dnsmos_bak": 2.5, "dnsmos_ovrl": 2.7})  # every floor must be reached: utt3's OVRL 2.6 is not
    assert both["train"] == plain["train"] - {"utt1.wav", "utt3.wav"}

    files = [clean / "utt0.wav", clean / "utt1.wav"]
    with pytest.raises(ValueError, match="corpus_quality.py --all"):
        screen(files, {}, {"dnsmos_bak": 3.0}, "x")
    with pytest.raises(ValueError, match="quality floor keys"):
        screen(files, scores, {"pesq": 3.0}, "x")
    with pytest.raises(ValueError, match="leaves no speech"):
        screen(files, scores, {"dnsmos_ovrl": 4.5}, "x")


def test_quality_pass_shards_resumes_and_skips_bad_files(tmp_path, monkeypatch, capsys):
    """``corpus_quality.py --all``: two shards score every speech row exactly once, a rerun scores
    nothing, an unreadable file is reported and skipped, and what it wrote is what the corpus reads."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import corpus_quality

    from speechnorm.data.corpus import read_quality

    folder = tmp_path / "speech"
    folder.mkdir()
    rows = ["file,kind,speaker,language,package,version,licence,seconds,split"]
    for i in range(5):
        sf.write(folder / f"u{i}.flac", burst(0.5, 16000, 100.0 + 20 * i), 16000)
        rows.append(f"u{i}.flac,speech,s{i % 2},xx,pkg{i % 2},1,GPL-2,0.5,train")
    (folder / "bad.flac").write_bytes(b"not audio")
    rows.append("bad.flac,speech,s0,xx,pkg0,1,GPL-2,0.5,train")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    # a stand-in for DNSMOS: a known function of the signal, so the written numbers can be checked
    monkeypatch.setattr(corpus_quality, "dnsmos", lambda audio, rate: {k: float(audio.abs().max()) + j
                                                                         for j, k in enumerate(corpus_quality.KEYS)})
    assert corpus_quality.main(["--speech-dir", str(folder), "--all", "--shard", "0/2"]) == 0
    assert corpus_quality.main(["--speech-dir", str(folder), "--all", "--shard", "1/2", "--packages", "pkg1"]) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "bad.flac" in out
    scores = read_quality(folder)
    assert sorted(Path(p).name for p in scores) == [f"u{i}.flac" for i in range(5)]
    peak = float(np.abs(sf.read(folder / "u3.flac", dtype="float32")[0]).max())
    assert scores[str((folder / "u3.flac").resolve())]["dnsmos_ovrl"] == pytest.approx(peak + 2, abs=1e-4)
    corpus_quality.main(["--speech-dir", str(folder), "--all", "--shard", "0/1"])  # everything is scored already
    assert "scored 0 utterances" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        corpus_quality.main(["--speech-dir", str(folder), "--all", "--shard", "2/2"])
