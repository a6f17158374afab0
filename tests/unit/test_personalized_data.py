"""Data for personalized models: each item's embedding enrolls the target's speaker from another
of their utterances, competing talkers sit at the drawn SIR, and plain items do not change."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechnorm import speaker
from speechnorm.data.corpus import Corpus
from speechnorm.data.dataset import Personalization, SimulatedMixtures
from speechnorm.data.enrollment import EmbeddingCache
from speechnorm.data.rooms import MixSpec, mix

needs_encoder = pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None,
                                   reason="the speaker encoder's weights are not installed (make venv installs them)")
CONVERSATION = Path(speaker.__file__).parent / "assets" / "real_speech" / "conversation.flac"
# stretches where one speaker talks alone (conversation.rttm)
TURNS = {"spkA__1": (10.6, 14.45), "spkA__2": (18.6, 21.45), "spkB__1": (14.75, 17.9), "spkB__2": (21.8, 27.8)}


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """Two real speakers, two utterances each (the file name's group is the speaker), and noise."""
    root = tmp_path_factory.mktemp("voices")
    wav, rate = sf.read(CONVERSATION, dtype="float32")
    (root / "clean").mkdir()
    (root / "noise").mkdir()
    for name, (start, end) in TURNS.items():
        sf.write(root / "clean" / f"{name}.wav", wav[int(start * rate): int(end * rate)], rate)
    rng = np.random.default_rng(0)
    sf.write(root / "noise" / "hum.wav", (0.05 * rng.standard_normal(2 * rate)).astype(np.float32), rate)
    return root


def dataset(voices, personalize, size=6, tmp=None):
    corpus = Corpus(voices / "clean", voices / "noise", "train")
    spec = MixSpec(noise_kinds=(("noise", 1.0),), distance=(0.5, 2.0))
    return SimulatedMixtures(corpus, "train", size, seconds=1.0, seed=5, mic_block=1, spec=spec,
                             personalize=personalize, cache_dir=tmp)


def test_talkers_sit_at_the_drawn_sir():
    rng = np.random.default_rng(0)
    speech, talker = torch.randn(8000), torch.randn(8000)
    delta = torch.zeros(2, 64)
    delta[:, 0] = 1.0  # a direct path only: the reverberant target is the target
    spec = MixSpec(snr_db=(200.0, 200.0))  # noise far below: what is left besides the target is the talker
    noisy, target = mix(rng, speech, [torch.randn(8000)], delta, [delta], spec, interferers=[talker],
                        interferer_rirs=[delta], sir_db=3.0)
    residual = noisy[0] - target
    measured = 10 * torch.log10(target.square().mean() / residual.square().mean())
    assert abs(float(measured) - 3.0) < 0.01
    with pytest.raises(ValueError, match="one RIR per interferer"):
        mix(rng, speech, [torch.randn(8000)], delta, [delta], spec, interferers=[talker], interferer_rirs=[], sir_db=3.0)


def test_plain_items_do_not_change(voices):
    plain = dataset(voices, None)
    before = [plain[i] for i in range(3)]
    personalized_plan = dataset(voices, Personalization()).plan(1)
    assert {k: v for k, v in personalized_plan.items() if k not in ("interferers", "sir_db")} == plain.plan(1)
    again = dataset(voices, None)
    for (noisy, target), (noisy2, target2) in zip(before, (again[i] for i in range(3))):
        assert torch.equal(noisy, noisy2) and torch.equal(target, target2)


def test_plan_draws_talkers_in_range(voices):
    data = dataset(voices, Personalization(interferers=(1, 2), sir_db=(-5.0, 0.0)), size=40)
    plans = [data.plan(i) for i in range(40)]
    assert {p["interferers"] for p in plans} == {1, 2}
    assert all(-5.0 <= p["sir_db"] <= 0.0 for p in plans)
    with pytest.raises(ValueError, match="interferers"):
        Personalization(interferers=(2, 1))


@needs_encoder
def test_enrollment_is_another_utterance_of_the_targets_speaker(voices, tmp_path):
    data = dataset(voices, Personalization(embeddings_dir=str(tmp_path / "emb")))
    cache = EmbeddingCache()
    own = {path.name: cache.get(path) for path in data.corpus.clean}
    for seed in range(6):
        clean, path, embedding = data._enrolled_target(np.random.default_rng(seed))
        matches = [name for name, value in own.items() if np.allclose(value, embedding)]
        assert len(matches) == 1 and matches[0] != path.name  # another utterance ...
        assert matches[0].split("__")[0] == path.name.split("__")[0]  # ... of the same speaker
    assert len(list((tmp_path / "emb").glob("*.npy"))) >= 2  # cached on disk for the next epoch


@needs_encoder
def test_personalized_item_is_a_triple_and_trains(voices, tmp_path):
    from speechnorm.task import EnhancementTask

    data = dataset(voices, Personalization(interferers=(1, 1), embeddings_dir=str(tmp_path / "emb")), size=2,
                   tmp=tmp_path / "items")
    noisy, target, embedding = data[0]
    assert noisy.dim() == 2 and target.shape == (noisy.shape[1],) and embedding.shape == (256,)
    assert torch.equal(data[0][2], embedding)  # the cached item keeps its embedding
    task = EnhancementTask(model="tac_gru", model_config={"hidden": 16, "layers": 1, "speaker_dim": 256})
    torch.nn.init.normal_(task.model.speaker.proj.weight, std=0.1)
    task.log = lambda *args, **kwargs: None
    loss = task.common_step((noisy[None], target[None], embedding[None]), "train")[0]
    loss.backward()
    assert torch.isfinite(loss) and task.model.speaker.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="is personalized"):
        task.common_step((noisy[None], target[None]), "train")


def test_too_few_utterances_per_speaker_is_a_clear_error(tmp_path):
    clean, noise = tmp_path / "clean", tmp_path / "noise"
    clean.mkdir()
    noise.mkdir()
    rng = np.random.default_rng(1)
    for name in ("solo1", "solo2"):  # every speaker has one utterance
        sf.write(clean / f"{name}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    sf.write(noise / "n.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    data = SimulatedMixtures(Corpus(clean, noise, "train"), "train", 2, seconds=0.5, mic_block=1,
                             personalize=Personalization())
    with pytest.raises(ValueError, match="two or more utterances"):
        data[0]


@needs_encoder
def test_evaluate_scores_a_personalized_model_with_each_items_embedding(voices, tmp_path):
    from conftest import save_checkpoint

    from speechnorm.evaluate import evaluate

    data = {"clean_dir": str(voices / "clean"), "noise_dir": str(voices / "noise"), "train_items": 2, "val_items": 2,
            "test_items": 3, "seconds": 1.0, "batch_size": 1, "seed": 2,
            "personalize": {"interferers": [0, 2], "sir_db": [0.0, 5.0], "embeddings_dir": str(tmp_path / "emb")}}
    checkpoint = save_checkpoint(tmp_path / "p.ckpt", hidden=16, layers=1, speaker_dim=256)
    stored = torch.load(checkpoint, weights_only=False)
    stored["datamodule_hyper_parameters"] = data
    torch.save(stored, checkpoint)
    result = evaluate(checkpoint, split="test", out=tmp_path / "eval", items=3, pictures=0, dnsmos=False)
    assert "tsos" in result["metrics"] and all(0.0 <= row["enhanced/tsos"] <= 1.0 for row in result["per_item"])
    assert {row["grouping"] for row in result["per_condition"]} >= {"talkers", "noise"}
    stored["datamodule_hyper_parameters"] = {k: v for k, v in data.items() if k != "personalize"}
    torch.save(stored, checkpoint)
    with pytest.raises(ValueError, match="is personalized"):
        evaluate(checkpoint, split="test", out=tmp_path / "eval2", items=1, pictures=0, dnsmos=False)


def test_voice_groups_are_talkers_but_never_targets(voices, tmp_path):
    """A speaker label of ``not_targets`` (a group of several voices) never gives the target, whose
    enrollment would then not be its voice; its utterances still compete. The item cache changes
    only where such a speaker is in the corpus."""
    emb = str(tmp_path / "emb")
    data = dataset(voices, Personalization(embeddings_dir=emb, not_targets=("spkB",)))
    assert {data.corpus.speaker(p) for p in data.corpus.clean} == {"spkA", "spkB"}
    for seed in range(10):
        _, path, _ = data._enrolled_target(np.random.default_rng(seed))
        assert data.corpus.speaker(path) == "spkA"
    files, corpus = data._talkers("spkA")
    assert {corpus.speaker(p) for p in files} == {"spkB"}
    default = dataset(voices, Personalization(embeddings_dir=emb), tmp=tmp_path / "items").cache
    assert dataset(voices, Personalization(embeddings_dir=emb, not_targets=("spk?",)), tmp=tmp_path / "items").cache != default
    assert dataset(voices, Personalization(embeddings_dir=emb, not_targets=("nobody*",)), tmp=tmp_path / "items").cache == default
    with pytest.raises(ValueError, match="not_targets"):
        dataset(voices, Personalization(embeddings_dir=emb, not_targets=("spk*",)))._enrolled_target(np.random.default_rng(0))


def test_talkers_are_never_the_targets_voice(voices, tmp_path):
    clean = tmp_path / "one_voice"
    clean.mkdir()
    for name in ("spkA__1", "spkA__2"):
        (clean / f"{name}.wav").write_bytes((voices / "clean" / f"{name}.wav").read_bytes())
    lone = Corpus(clean, voices / "noise", "train")
    data = SimulatedMixtures(lone, "val", 2, seconds=0.5, mic_block=1, personalize=Personalization())
    with pytest.raises(ValueError, match="no speaker but 'spkA'"):
        data._talkers("spkA")
    borrowed = SimulatedMixtures(lone, "val", 2, seconds=0.5, mic_block=1, personalize=Personalization(),
                                 talker_corpus=Corpus(voices / "clean", voices / "noise", "train"))
    files, corpus = borrowed._talkers("spkA")
    assert files and {corpus.speaker(p) for p in files} == {"spkB"}


@needs_encoder
def test_the_comparison_script_gives_the_same_numbers_as_evaluate(voices, tmp_path):
    """scripts/evaluate_real.py on a personalized config: a personalized and a plain model on the
    same clips, TSOS and talker conditions reported, and the personalized model's number on each
    clip is the one ``speechnorm evaluate`` gives (one evaluation path)."""
    import json
    import sys

    import yaml
    from conftest import save_checkpoint

    from speechnorm.evaluate import evaluate

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import evaluate_real

    data = {"clean_dir": str(voices / "clean"), "noise_dir": str(voices / "noise"), "train_items": 2, "val_items": 2,
            "test_items": 2, "seconds": 1.0, "batch_size": 1, "seed": 4,
            "personalize": {"interferers": [1, 2], "sir_db": [0.0, 5.0], "embeddings_dir": str(tmp_path / "emb")}}
    config = tmp_path / "conf.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    personal = save_checkpoint(tmp_path / "p.ckpt", hidden=16, layers=1, speaker_dim=256)
    stored = torch.load(personal, weights_only=False)
    stored["state_dict"]["model.speaker.proj.weight"].normal_(0, 0.2)
    stored["datamodule_hyper_parameters"] = data
    torch.save(stored, personal)
    plain = save_checkpoint(tmp_path / "plain.ckpt", hidden=16, layers=1)
    evaluate_real.main(["--config", str(config), "--model", str(personal), "--model", str(plain), "--no-peers",
                        "--splits", "test", "--out", str(tmp_path / "out"), "--name", "pe", "--wrong-enrollment"])
    result = json.loads((tmp_path / "out" / "pe.json").read_text())
    # the wrong enrollment is a system of the personalized model only
    assert [n for n in result["systems"] if "wrong enrollment" in n] == [f"{next(n for n in result['systems'] if n.endswith('/p'))} (wrong enrollment)"]
    assert "tsos" in result["metrics"] and any(r["grouping"] == "talkers" for r in result["per_condition"])
    by_evaluate = evaluate(personal, split="test", out=tmp_path / "ev", pictures=0, dnsmos=False)["per_item"]
    name = next(n for n in result["systems"] if n.endswith("/p"))
    for row, reference in zip(result["per_item"], by_evaluate):
        assert row["talkers"] == reference["talkers"]
        for metric in ("si_sdr", "pesq", "stoi", "tsos"):
            assert row[f"{name}/{metric}"] == pytest.approx(reference[f"enhanced/{metric}"], abs=1e-9), metric


def test_least_similar_picks_the_other_voice():
    """The impostor enrollment of ``evaluate_real --wrong-enrollment`` is the candidate of lowest
    cosine similarity, whatever the vectors' lengths."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import evaluate_real

    me = np.array([1.0, 0.0, 0.0])
    candidates = [np.array([5.0, 0.1, 0.0]), np.array([0.0, 0.2, 0.0]), np.array([0.7, 0.7, 0.0]), me]
    assert evaluate_real.least_similar(me, candidates) is candidates[1]
    assert evaluate_real.least_similar(candidates[1], candidates) is candidates[3]  # cosine 0, not c0's 0.02


def _tone_corpus(root: Path, hz: float) -> Path:
    """Two 'speakers' of pure tones (two utterances each) and faint noise."""
    (root / "clean").mkdir(parents=True)
    (root / "noise").mkdir()
    t = np.arange(3 * 16000) / 16000
    for name in ("toneA__1", "toneA__2", "toneB__1", "toneB__2"):
        sf.write(root / "clean" / f"{name}.wav", (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), 16000)
    sf.write(root / "noise" / "n.wav", (1e-4 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    return root


def test_voice_speeds_play_the_target_faster_on_train_only(tmp_path):
    """A pseudo-speaker at speed f: a tone of 500 Hz in the corpus is a tone of 500 f Hz in the
    training target (closed form), while validation and test items, their plans and a run without
    voice_speeds are the same as before; the item cache tells them apart."""
    root = _tone_corpus(tmp_path / "tones", 500.0)

    class NoEncoder(EmbeddingCache):  # the tone cannot enroll; the encoder is tested below
        def get(self, path, speed=1.0):
            self.speeds = getattr(self, "speeds", []) + [speed]
            return np.full(256, speed, np.float32)

    def make(split, personalize, cache=None):
        corpus = Corpus(root / "clean", root / "noise", split)
        data = SimulatedMixtures(corpus, split, 2, seconds=1.0, seed=3, mic_block=1, personalize=personalize,
                                 spec=MixSpec(noise_kinds=(("noise", 1.0),), snr_db=(60.0, 60.0)), cache_dir=cache)
        data.embeddings = NoEncoder()
        return data

    sped = make("train", Personalization(interferers=(0, 0), voice_speeds=(1.2, 1.2)))
    clean, _, embedding = sped._enrolled_target(np.random.default_rng(0), sped._speed(np.random.default_rng(1)))
    spectrum = np.abs(np.fft.rfft(clean.numpy() * np.hanning(clean.numel())))
    assert np.fft.rfftfreq(clean.numel(), 1 / 16000)[spectrum.argmax()] == pytest.approx(600.0, abs=2.0)
    assert clean.numel() == pytest.approx(3 * 16000 / 1.2, abs=2) and embedding[0] == pytest.approx(1.2)
    # through the item itself: the enrollment at the drawn speed, the (reverberant) target's tone moved
    item = make("train", Personalization(interferers=(0, 0), voice_speeds=(1.2, 1.2)))[0]
    spectrum = np.abs(np.fft.rfft(item[1].numpy() * np.hanning(item[1].numel())))
    assert np.fft.rfftfreq(item[1].numel(), 1 / 16000)[spectrum.argmax()] == pytest.approx(600.0, abs=2.0)
    assert float(item[2][0]) == pytest.approx(1.2)
    # a range of one speed, 1: the new stream is drawn, every item the same as without voice_speeds
    for a, b in zip(make("train", Personalization())[1], make("train", Personalization(voice_speeds=(1.0, 1.0)))[1]):
        assert torch.equal(a, b)
    drawn = make("train", Personalization(voice_speeds=(0.85, 1.15)))
    assert all(0.85 <= drawn._speed(np.random.default_rng(s)) <= 1.15 for s in range(20))
    for split in ("val", "test"):
        plain, varied = make(split, Personalization()), make(split, Personalization(voice_speeds=(1.2, 1.2)))
        assert varied.plan(1) == plain.plan(1)
        for a, b in zip(plain[1], varied[1]):
            assert torch.equal(a, b)
        assert varied.embeddings.speeds == [1.0]
    plain, varied = make("train", Personalization(), tmp_path / "c"), make("train", Personalization(voice_speeds=(0.9, 1.1)), tmp_path / "c")
    assert varied.plan(0) == plain.plan(0) and varied.cache != plain.cache
    assert make("val", Personalization(voice_speeds=(0.9, 1.1)), tmp_path / "c").cache == make("val", Personalization(), tmp_path / "c").cache
    assert Personalization(voice_speeds=["0.9", 1]).voice_speeds == (0.9, 1.0)  # as YAML may give them
    for bad in ((1.1, 0.9), (0.2, 1.0), (1.0,), ("fast", "slow")):
        with pytest.raises(ValueError, match="voice_speeds"):
            Personalization(voice_speeds=bad)


@needs_encoder
def test_a_pseudo_speakers_embedding_is_its_faster_recording(voices, tmp_path):
    """``EmbeddingCache.get(path, speed=f)`` is the embedding of the same samples declared at
    16000 f Hz (read and resampled by another path), kept apart from the embedding at speed 1."""
    path = voices / "clean" / "spkB__2.wav"
    wav, rate = sf.read(path, dtype="float32")
    faster = tmp_path / "faster.wav"
    sf.write(faster, wav, round(rate * 1.15))
    cache = EmbeddingCache(tmp_path / "emb")
    sped, plain = cache.get(path, speed=1.15), cache.get(path)
    assert np.allclose(sped, speaker.embed_file(faster)[0], atol=1e-4)
    assert speaker.similarity(sped, plain) < 0.99
    assert np.allclose(EmbeddingCache(tmp_path / "emb").get(path, speed=1.15), sped)  # from disk
    assert len(list((tmp_path / "emb").glob("*.npy"))) == 2
    narrow = tmp_path / "narrow.wav"  # below the encoder's 16 kHz: refused at any speed, never upsampled
    sf.write(narrow, wav[::2], rate // 2)
    assert cache.get(narrow) is None and cache.get(narrow, speed=1.1) is None


@needs_encoder
def test_the_comparison_script_sets_the_talkers_and_their_sir(voices, tmp_path):
    """``evaluate_real --talkers 1 --sir-db 0``: every clip has one competing talker at 0 dB, and
    keeps its conditions, target utterance and enrollment; a plain recipe refuses the options."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import evaluate_real

    data = {"clean_dir": str(voices / "clean"), "noise_dir": str(voices / "noise"), "train_items": 2, "val_items": 2,
            "test_items": 3, "seconds": 1.0, "batch_size": 1, "seed": 4,
            "personalize": {"interferers": [0, 2], "sir_db": [-5.0, 10.0], "embeddings_dir": str(tmp_path / "emb")}}
    config = tmp_path / "conf.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    default = list(evaluate_real.clips(str(config), None, ["test"]))
    fixed = list(evaluate_real.clips(str(config), None, ["test"], talkers=1, sir_db=0.0))
    assert [c[2]["interferers"] for c in fixed] == [1, 1, 1] and {c[2]["sir_db"] for c in fixed} == {0.0}
    for (_, _, plan, _, _, embedding), (_, _, plan2, _, _, embedding2) in zip(default, fixed):
        assert {k: v for k, v in plan.items() if k not in ("interferers", "sir_db")} == \
               {k: v for k, v in plan2.items() if k not in ("interferers", "sir_db")}
        assert np.array_equal(embedding, embedding2)
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"data": {k: v for k, v in data.items() if k != "personalize"}}))
    with pytest.raises(evaluate_real.NotPersonalized, match="not a personalized recipe"):
        list(evaluate_real.clips(str(plain), None, ["test"], talkers=1))


def test_the_comparison_report_pairs_each_model_with_the_last():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    import evaluate_real

    a, b = [1.0, 2.0, 6.0], [0.0, 0.0, 3.0]  # differences 1, 2, 3: mean 2, standard error 1/sqrt(3)
    rows = [{"split": "test", "talkers": k, "a/si_sdr": x, "b/si_sdr": y} for k, x, y in zip((1, 1, 2), a, b)]
    result = {"config": "c.yaml", "clips": 3, "systems": ["a", "b"], "models": ["a", "b"], "metrics": ["si_sdr"],
              "talkers": None, "sir_db": None, "per_item": rows, "per_condition": [],
              "mean": {"test": {n: {"si_sdr": 0.0, "rtf": 0.0} for n in ("a", "b")}}}
    text = evaluate_real.markdown(result)
    assert "| all | 3 | +2.00 ± 0.58 |" in text and "| talkers 1 | 2 | +1.50 ± 0.50 |" in text
    assert "| talkers 2 | 1 | +3.00 ± nan |" in text
