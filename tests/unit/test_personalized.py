"""Personalized models: the target speaker's embedding conditions the model, offline == step ==
ONNX for every stream's own speaker, and a missing or wrong embedding is an error."""

import numpy as np
import pytest
import torch

from speechnorm.models import build
from speechnorm.models.layers import SpeakerFiLM

DIM = 8


def unit(rows: int, seed: int) -> torch.Tensor:
    raw = torch.rand(rows, DIM, generator=torch.Generator().manual_seed(seed))
    return raw / raw.norm(dim=1, keepdim=True)


def personalized(seed: int = 0):
    torch.manual_seed(seed)
    model = build("tac_gru", norm="online", size="small", hidden=24, layers=1, speaker_dim=DIM).eval()
    with torch.no_grad():
        model.speaker.proj.weight.normal_(0, 0.5)  # trained-like: the embedding matters
        model.speaker.proj.bias.normal_(0, 0.1)
    return model


def test_film_is_the_closed_form():
    film = SpeakerFiLM(DIM, 3)
    with torch.no_grad():
        film.proj.weight.normal_()
        film.proj.bias.normal_()
    x, e = torch.randn(2, 3, 5), unit(2, 1)
    gamma, beta = (e @ film.proj.weight.T + film.proj.bias).split(3, dim=1)
    expected = x * (1 + gamma[:, :, None]) + beta[:, :, None]
    torch.testing.assert_close(film.condition(x, e), expected)
    step, state = film.step(x[:, :, 0], {"embedding": e})
    torch.testing.assert_close(step, expected[:, :, 0])
    assert state["embedding"] is e  # passed through unchanged
    with pytest.raises(TypeError, match="needs the speaker embedding"):
        film(x)


def test_offline_equals_step_with_a_different_speaker_per_stream():
    model, audio, speakers = personalized(), torch.randn(2, 3, 160 * 12) * 0.1, unit(2, 2)
    with torch.no_grad():
        whole = model(audio, speaker=speakers)
        state = model.initial_state(2, mics=3, speaker=speakers)
        hops = []
        for t in range(12):
            out, state = model.step(audio[..., t * 160 : (t + 1) * 160], state)
            hops.append(out)
        alone = torch.cat([model(audio[i : i + 1], speaker=speakers[i]) for i in range(2)])
    torch.testing.assert_close(torch.cat(hops, -1), whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, whole, atol=1e-6, rtol=1e-6)  # each stream hears only its own speaker
    with torch.no_grad():
        swapped = model(audio, speaker=speakers.flip(0))
    assert (swapped - whole).abs().max() > 1e-3  # the embedding changes the output


def test_untrained_film_starts_as_the_plain_model():
    torch.manual_seed(3)
    plain = build("tac_gru", norm="online", size="small", hidden=24, layers=1).eval()
    model = build("tac_gru", norm="online", size="small", hidden=24, layers=1, speaker_dim=DIM).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == {"speaker.proj.weight", "speaker.proj.bias"} and not unexpected
    audio = torch.randn(1, 2, 160 * 6) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(model(audio, speaker=unit(1, 4)), plain(audio), rtol=0, atol=0)


def test_a_missing_or_wrong_embedding_is_an_error():
    model, plain = personalized(), build("tac_gru", norm="online", size="small", hidden=24, layers=1)
    audio = torch.randn(2, 2, 320) * 0.1
    with pytest.raises(ValueError, match="is personalized"):
        model(audio)
    with pytest.raises(ValueError, match="is personalized"):
        model.initial_state(2, mics=2)
    with pytest.raises(ValueError, match="not personalized"):
        plain(audio, speaker=unit(2, 0))
    with pytest.raises(ValueError, match=f"embedding of {DIM} values"):
        model(audio, speaker=torch.ones(2, DIM + 1))
    with pytest.raises(ValueError, match=f"embedding of {DIM} values"):
        model(audio, speaker=torch.ones(3, DIM))  # one per stream, not three for two
    with pytest.raises(ValueError, match="NaN or inf"):
        model(audio, speaker=torch.full((DIM,), float("nan")))
    with pytest.raises(ValueError, match="speaker_dim"):
        build("tac_gru", norm="online", size="small", speaker_dim=-1)


def test_checkpoint_round_trip_keeps_the_model_personalized(tmp_path):
    from conftest import save_checkpoint

    from speechnorm.models.checkpoint import load_model

    path = save_checkpoint(tmp_path / "p.ckpt", hidden=24, layers=1, speaker_dim=DIM)
    model, info = load_model(path)
    assert model.personalized and model.speaker_dim == DIM and info["model_config"]["speaker_dim"] == DIM


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from speechnorm.export.exporter import export_module

    folder = tmp_path_factory.mktemp("personalized")
    model = personalized(1)
    card = export_module(model, folder, max_mics=3)
    return model, folder, card


def test_onnx_graphs_take_the_embedding_and_match_pytorch(exported):
    from speechnorm.stream import OnnxModel, StreamingEnhancer

    model, folder, card = exported
    assert card["onnx"]["speaker"]["dim"] == DIM and card["onnx"]["speaker"]["state"] == "state.speaker.embedding"
    onnx = OnnxModel(folder / "model.onnx")
    assert onnx.speaker_dim == DIM
    audio = (np.random.default_rng(0).standard_normal((2, 160 * 10)) * 0.1).astype(np.float32)
    speaker = unit(1, 5)[0].numpy()
    with torch.no_grad():
        expected = model(torch.from_numpy(audio)[None], speaker=torch.from_numpy(speaker))[0].numpy()
    np.testing.assert_allclose(onnx.offline(audio, speaker=speaker), expected, atol=1e-5)
    stream = onnx.open(2, speaker=speaker)
    stepped = np.concatenate([stream.step(audio[:, t * 160 : (t + 1) * 160]).copy() for t in range(10)])
    np.testing.assert_allclose(stepped, expected, atol=1e-5)
    stream.reset()  # starts over for the same speaker
    again = np.concatenate([stream.step(audio[:, t * 160 : (t + 1) * 160]).copy() for t in range(10)])
    np.testing.assert_array_equal(again, stepped)
    engine = StreamingEnhancer(onnx, 2, speaker=speaker)
    out = np.concatenate([engine.process(audio), engine.flush()])
    np.testing.assert_allclose(out[: -160], expected[160:], atol=1e-5)  # delay-compensated
    for call in (lambda: onnx.open(2), lambda: onnx.offline(audio), lambda: StreamingEnhancer(onnx, 2)):
        with pytest.raises(ValueError, match="is personalized"):
            call()
    with pytest.raises(ValueError, match=f"embedding of {DIM} values"):
        onnx.open(2, speaker=np.ones(DIM - 1, np.float32))


def test_batched_streams_each_keep_their_own_speaker(exported):
    from speechnorm.stream import OnnxModel
    from speechnorm.stream.batch import StatePool

    model, folder, _ = exported
    onnx = OnnxModel(folder / "model.onnx")
    pool = StatePool(onnx, 2)
    speakers = [unit(1, seed)[0].numpy() for seed in (6, 7)]
    slots = [pool.acquire(speaker) for speaker in speakers]
    audio = (np.random.default_rng(1).standard_normal((2, 2, 160 * 8)) * 0.1).astype(np.float32)
    together = np.concatenate([pool.run(slots, audio[:, :, t * 160 : (t + 1) * 160]) for t in range(8)], axis=1)
    for row, speaker in enumerate(speakers):
        with torch.no_grad():
            alone = model(torch.from_numpy(audio[row])[None], speaker=torch.from_numpy(speaker))[0].numpy()
        np.testing.assert_allclose(together[row], alone, atol=1e-5)
    with pytest.raises(ValueError, match="is personalized"):
        pool.acquire()


def test_tsos_counts_the_targets_suppressed_speech_frames():
    from speechnorm.scoring import tsos

    t = torch.arange(32000) / 16000
    target = torch.sin(2 * torch.pi * 200 * t) * (t < 1.5)  # 1.5 s of tone, then 0.5 s of silence
    assert tsos(target, target) == 0.0
    assert tsos(0.2 * target, target) == 0.0  # a level change of the whole output is not suppression
    cut = target.clone()
    cut[8000:16000] = 0.0  # the output drops 0.5 s of the target's 1.5 s of speech
    frames = (torch.arange(199) * 160)  # the 20 ms frames every 10 ms of 2 s
    active = frames + 320 <= 24000 + 160  # frames overlapping the tone (boundary frames hold enough of it)
    dropped = (frames >= 8000 - 160) & (frames + 320 <= 16000 + 160)
    expected = float((dropped & active).sum() / active.sum())
    assert abs(tsos(cut, target) - expected) < 0.02  # the edges of the cut: partial frames
    assert 0.30 < tsos(cut, target) < 0.36  # about a third of the speech frames
    assert tsos(torch.zeros(100), torch.zeros(100)) != tsos(torch.zeros(100), torch.zeros(100))  # NaN: nothing to judge
