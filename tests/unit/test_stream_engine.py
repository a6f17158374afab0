"""StreamingEnhancer: any chunking gives the offline result, delay-compensated and length-exact;
bad chunks are refused without touching the state; streams never share state."""

import numpy as np
import pytest
import torch

from speechnorm.models.checkpoint import load_model
from speechnorm.stream import AtRate, StreamingEnhancer, load

DELAY = 160


def offline_truth(checkpoint, audio):
    """model(x) on the zero-padded signal, the fixed delay removed: PyTorch's offline forward."""
    model, _ = load_model(checkpoint)
    count = audio.shape[1]
    padded = -(-(count + DELAY) // 160) * 160
    with torch.inference_mode():
        out = model(torch.from_numpy(np.pad(audio, ((0, 0), (0, padded - count))))[None])[0].numpy()
    return out[DELAY : DELAY + count]


def chunked(engine, audio, rng, largest=700):
    parts, start = [], 0
    while start < audio.shape[1]:
        size = int(rng.integers(0, largest))
        parts.append(engine.process(audio[:, start : start + size]))
        start += size
    parts.append(engine.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_any_chunking_equals_the_offline_forward(tiny_export, backend):
    folder, checkpoint = tiny_export
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((3, 4321))).astype(np.float32)  # not a multiple of the hop
    engine = StreamingEnhancer.from_path(folder if backend == "onnx" else checkpoint, mics=3, backend=backend)
    out = chunked(engine, audio, rng)
    assert out.shape == (audio.shape[1],) and out.dtype == np.float32
    np.testing.assert_allclose(out, offline_truth(checkpoint, audio), atol=5e-5)
    # flush() reset the stream: the same input again gives the same output
    np.testing.assert_array_equal(chunked(engine, audio, np.random.default_rng(1)), out)


def test_bad_chunks_are_refused_and_change_nothing(tiny_export):
    folder, _ = tiny_export
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((2, 1600))).astype(np.float32)
    clean = StreamingEnhancer.from_path(folder, mics=2)
    expected = np.concatenate([clean.process(audio[:, :700]), clean.process(audio[:, 700:]), clean.flush()])
    engine = StreamingEnhancer.from_path(folder, mics=2)
    first = engine.process(audio[:, :700])
    bad_chunks = {
        "NaN": np.full((2, 50), np.nan, np.float32),
        "inf": np.full((2, 50), np.inf, np.float32),
        "shape": np.zeros((3, 50), np.float32),
        "int16": np.zeros((2, 50), np.int16),
        "far beyond": np.full((2, 50), 20000.0, np.float32),
    }
    for what, chunk in bad_chunks.items():
        with pytest.raises(ValueError):
            engine.process(chunk)
    out = np.concatenate([first, engine.process(audio[:, 700:]), engine.flush()])
    np.testing.assert_array_equal(out, expected)


def test_mic_counts_outside_the_card_are_refused(tiny_export):
    folder, _ = tiny_export
    model = load(folder)
    for mics in (0, 7):
        with pytest.raises(ValueError, match="1 to 6 microphones"):
            StreamingEnhancer(model, mics)


def test_streams_on_one_shared_model_are_isolated(tiny_export):
    folder, _ = tiny_export
    model = load(folder)  # one onnxruntime session
    rng = np.random.default_rng(0)
    a = (0.1 * rng.standard_normal((1, 3200))).astype(np.float32)
    b = (0.3 * rng.standard_normal((4, 3200))).astype(np.float32)
    alone_a = np.concatenate([StreamingEnhancer(model, 1).process(a), np.zeros(0)])
    engine_b = StreamingEnhancer(model, 4)
    alone_b = engine_b.process(b)
    ea, eb = StreamingEnhancer(model, 1), StreamingEnhancer(model, 4)
    parts_a, parts_b = [], []
    for start in range(0, 3200, 320):  # interleaved hop by hop
        parts_a.append(ea.process(a[:, start : start + 320]))
        parts_b.append(eb.process(b[:, start : start + 320]))
    np.testing.assert_array_equal(np.concatenate(parts_a), alone_a)
    np.testing.assert_array_equal(np.concatenate(parts_b), alone_b)


def test_at_another_rate_the_length_is_kept_and_chunking_does_not_matter(tiny_export):
    folder, _ = tiny_export
    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.05 * rng.standard_normal(t.size)]).astype(np.float32)
    model = load(folder)
    whole = AtRate(StreamingEnhancer(model, 2), 44100)
    expected = np.concatenate([whole.process(audio), whole.flush()])
    assert expected.shape == (44100,)
    pieces = AtRate(StreamingEnhancer(model, 2), 44100)
    np.testing.assert_array_equal(chunked(pieces, audio, rng, largest=3000), expected)
    with pytest.raises(ValueError, match="sample rate"):
        AtRate(StreamingEnhancer(model, 2), 1000)
