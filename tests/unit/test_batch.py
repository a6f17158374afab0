"""Streams batched into shared model calls: every stream's output is what it gets alone (the
one-stream step graph), whoever shares its calls, joins, leaves or fails beside it."""

import asyncio

import numpy as np
import pytest

from speechnorm.stream import AtRate, StreamingEnhancer
from speechnorm.stream.backends import OnnxModel
from speechnorm.stream.batch import Batcher, StatePool

TOLERANCE = 1e-6  # onnxruntime's kernels may sum in another order for another batch size


@pytest.fixture(scope="module")
def model(tiny_export):
    return OnnxModel(tiny_export[0] / "model.onnx")


def noise(seed, mics, samples, scale=0.1):
    return (scale * np.random.default_rng(seed).standard_normal((mics, samples))).astype(np.float32)


def alone(model, audio, rate=None):
    """The reference: one stream through the one-stream graph, hop by hop, then flushed."""
    engine = StreamingEnhancer(model, audio.shape[0])
    engine = AtRate(engine, rate) if rate else engine
    return np.concatenate([engine.process(audio), engine.flush()])


def test_pool_rows_match_one_stream_graphs_as_streams_join_and_leave(model):
    mics, hop, hops = 3, model.hop, 60
    pool = StatePool(model, mics, capacity=2)  # grows while streams are active
    audio = {k: noise(k, mics, hop * hops, scale=10.0 ** -k) for k in range(5)}
    joins = {0: 0, 1: 0, 2: 7, 3: 20, 4: 33}  # hop at which each stream starts
    leaves = {1: 25}  # stream 1 leaves; its row is reused by a later one
    slots, refs, worst = {}, {}, 0.0
    for t in range(hops):
        for k, start in joins.items():
            if start == t:
                slots[k], refs[k] = pool.acquire(), model.open(mics)
        for k, end in leaves.items():
            if end == t and k in slots:
                pool.release(slots.pop(k))
        live = sorted(slots)
        index = [t - joins[k] for k in live]
        together = pool.run([slots[k] for k in live],
                            np.stack([audio[k][:, i * hop : (i + 1) * hop] for k, i in zip(live, index)]))
        for k, i, row in zip(live, index, together):
            worst = max(worst, float(np.abs(refs[k].step(audio[k][:, i * hop : (i + 1) * hop]) - row).max()))
    assert slots[4] == 1  # the lowest free row: the one stream 1 left
    assert worst <= TOLERANCE


def test_a_stream_gets_the_same_samples_batched_as_alone_at_any_rate(model):
    audio = noise(7, 2, 4410)
    engine = AtRate(StreamingEnhancer(model, 2, stream=_slot(model, 2)), 44100)
    batched = np.concatenate([engine.process(audio[:, :1000]), engine.process(audio[:, 1000:]), engine.flush()])
    np.testing.assert_allclose(batched, alone(model, audio, 44100), atol=TOLERANCE)


def _slot(model, mics):
    from speechnorm.stream.batch import PoolSlot

    return PoolSlot(StatePool(model, mics))


def test_batcher_serves_concurrent_streams_exactly_and_a_long_message_delays_no_one(model):
    """Streams of 1 and 3 mics at once (two pools), messages of different sizes; one stream sends
    100 hops in one message while another sends hop-sized messages: the short ones finish while
    the long one is still being worked through, and every output equals the stream alone."""
    hop = model.hop
    audio = {"long": noise(1, 1, 100 * hop), "short": noise(2, 3, 12 * hop), "odd": noise(3, 3, 5 * hop + 37)}
    sizes = {"long": [100 * hop], "short": [hop] * 12, "odd": [300, 1, 0, 5 * hop + 37 - 301]}

    async def main():
        batcher = Batcher(model, max_batch=8, wait_s=0.001)
        finished = []

        async def stream(name):
            x = audio[name]
            slot = batcher.open(x.shape[0])
            engine = StreamingEnhancer(model, x.shape[0], stream=slot)
            parts, start = [], 0
            for size in sizes[name]:
                parts.append(await batcher.drive(slot, engine.steps(x[:, start : start + size])))
                start += size
            parts.append(await batcher.drive(slot, engine.flush_steps()))
            batcher.close(slot)
            finished.append(name)
            return np.concatenate(parts)

        results = await asyncio.gather(*(stream(name) for name in audio))
        batcher.stop()
        return dict(zip(audio, results)), finished, batcher.stats()

    results, finished, stats = asyncio.run(main())
    for name, x in audio.items():
        np.testing.assert_allclose(results[name], alone(model, x), atol=TOLERANCE, err_msg=name)
    assert finished[-1] == "long"  # its 100 hops took 100 rounds; the others were served in between
    assert stats["mean_batch"] > 1  # streams did share calls


def test_a_stream_that_leaves_mid_message_disturbs_no_one(model):
    hop = model.hop
    steady, leaving = noise(4, 2, 30 * hop), noise(5, 2, 400 * hop)

    async def main():
        batcher = Batcher(model, max_batch=4, wait_s=0.0)
        gone = batcher.open(2)
        engine = StreamingEnhancer(model, 2, stream=gone)
        pending = asyncio.ensure_future(batcher.submit(gone, next(engine.steps(leaving))))
        slot = batcher.open(2)
        mine = StreamingEnhancer(model, 2, stream=slot)
        parts = []
        for start in range(0, steady.shape[1], hop):
            if start == 10 * hop:  # the other stream's client drops while its message is half done
                pending.cancel()
                batcher.close(gone)
            parts.append(await batcher.drive(slot, mine.steps(steady[:, start : start + hop])))
        parts.append(await batcher.drive(slot, mine.flush_steps()))
        reused = batcher.open(2)  # the departed stream's row, reset
        batcher.stop()
        return np.concatenate(parts), reused, gone

    out, reused, gone = asyncio.run(main())
    np.testing.assert_allclose(out, alone(model, steady), atol=TOLERANCE)
    assert reused.slot == gone.slot
    pool = reused.pool
    for rows, initial in zip(pool.rows, pool.initial):
        np.testing.assert_array_equal(rows[reused.slot], initial)


def test_a_model_without_a_batched_graph_is_refused_with_a_clear_error(model, tmp_path):
    import shutil

    for name in ("model.onnx",):
        shutil.copy(model.path.with_name(name), tmp_path / name)
    bare = OnnxModel(tmp_path / "model.onnx")
    assert bare.batch_session is None
    with pytest.raises(ValueError, match="model_batch.onnx"):
        StatePool(bare, 1)
    with pytest.raises(ValueError, match="model_batch.onnx"):
        Batcher(bare)


def test_a_stream_that_pauses_is_not_waited_for(model):
    """Rounds wait (here up to 5 s) for active streams' hops, never for a stream that went quiet:
    the other stream's hops go through at once."""
    from speechnorm.stream.batch import ACTIVE_S

    hop = model.hop

    async def main():
        batcher = Batcher(model, max_batch=8, wait_s=5.0)
        quiet, busy = batcher.open(1), batcher.open(1)
        await batcher.submit(quiet, [noise(0, 1, hop)])  # alone and waited for nobody: runs at once
        await asyncio.sleep(ACTIVE_S * 1.5)
        outputs = [await asyncio.wait_for(batcher.submit(busy, [noise(k, 1, hop)]), 2.0) for k in range(5)]
        batcher.stop()
        return outputs

    assert len(asyncio.run(main())) == 5
