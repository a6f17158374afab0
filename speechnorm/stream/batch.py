"""Many streams, one model call: the batched step graph (``model_batch.onnx``) behind a pool of slots.

Every stream of one mic count owns a *slot* of a ``StatePool``: one row of each state tensor,
batch-first as the batched graph takes it (``speechnorm.export.step_graph``). A round gathers the
rows of the streams that have a hop ready (one indexing per state tensor), runs them in one
onnxruntime call and scatters the new states back. Rows never mix: each stream's output is the
one-stream graph's (tested bit-identical), whatever else shares its call.

``Batcher`` is the asyncio side for a server: streams ``submit`` their hops and await the
outputs; one task runs rounds, each taking at most one hop from every stream with work queued
(so a stream that sends a long message cannot delay the others: its hops spread over rounds),
after waiting at most ``wait_s`` for the other *active* streams (those that sent a hop within
``ACTIVE_S``) to have a hop ready: a stream that pauses is not waited for.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..graph_io import AUDIO
from .backends import OnnxModel

#: A stream that gave the batcher a hop within this long is waited for (up to ``wait_s``) so that
#: its next hop shares the call; an idle one is not.
ACTIVE_S = 0.05


class StatePool:
    """The states of up to ``capacity`` streams of ``mics`` mics, one row each (grows by doubling)."""

    def __init__(self, model: OnnxModel, mics: int, capacity: int = 8):
        session = model.batch_session
        if session is None:
            raise ValueError(f"{model.path.parent}: no batched step graph (model_batch.onnx); re-export the model")
        model.check_mics(mics)
        self.model, self.mics, self.session = model, mics, session
        self.names = [spec.name for spec in model.states]
        self.initial = [spec.initial_for(mics) for spec in model.states]
        self.rows = [np.empty((0, *init.shape), np.float32) for init in self.initial]
        self._free: list[int] = []
        self._grow(capacity)

    def _grow(self, capacity: int) -> None:
        old = self.rows[0].shape[0]
        self.rows = [np.concatenate((rows, np.repeat(init[None], capacity - old, axis=0)))
                     for rows, init in zip(self.rows, self.initial)]
        for slot in range(old, capacity):
            heapq.heappush(self._free, slot)

    def acquire(self, speaker=None) -> int:
        """A free slot, at its initial state (the lowest free one: active rows stay packed). A
        personalized model's stream holds its speaker's embedding (``speaker``) in its row."""
        speaker = self.model.check_speaker(speaker)
        if not self._free:
            self._grow(2 * self.rows[0].shape[0])
        slot = heapq.heappop(self._free)
        for rows, init in zip(self.rows, self.initial):
            rows[slot] = init
        if speaker is not None:
            self.rows[self.model.speaker_index][slot] = speaker[None]  # the state's (1, D)
        return slot

    def release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def reset(self, slot: int) -> None:
        """The slot's stream starts over (for the same speaker, if personalized)."""
        keep = self.model.speaker_index
        for index, (rows, init) in enumerate(zip(self.rows, self.initial)):
            if index != keep:
                rows[slot] = init

    def run(self, slots: list[int] | np.ndarray, audio: np.ndarray) -> np.ndarray:
        """One hop of each of ``slots``' streams: audio (S, mics, hop) -> enhanced (S, hop); states advance."""
        index = self.index(slots)
        outputs = self.session.run(None, self.feeds(index, audio))
        self.scatter(index, outputs[1:])
        return outputs[0]

    @staticmethod
    def index(slots) -> np.ndarray | slice:
        """Row indices; a slice for consecutive rows (the usual case: views, no gather)."""
        index = np.asarray(slots)
        if len(index) and index[-1] - index[0] == len(index) - 1 and (len(index) == 1 or (np.diff(index) == 1).all()):
            return slice(int(index[0]), int(index[-1]) + 1)
        return index

    def feeds(self, index, audio: np.ndarray) -> dict:
        feeds = {AUDIO: audio}
        for name, rows in zip(self.names, self.rows):
            feeds[name] = rows[index]
        return feeds

    def scatter(self, index, new_states: list[np.ndarray]) -> None:
        for rows, new in zip(self.rows, new_states):
            rows[index] = new


class PoolSlot:
    """One stream's row of a pool, as ``StreamingEnhancer``'s stream: ``step`` runs a batch of one."""

    def __init__(self, pool: StatePool, speaker=None):
        self.pool, self.slot = pool, pool.acquire(speaker)
        self.released = False
        self.last_submit = float("-inf")  # when its stream last gave the batcher work

    def step(self, hop_audio: np.ndarray) -> np.ndarray:
        return self.pool.run([self.slot], hop_audio[None])[0]

    def reset(self) -> None:
        self.pool.reset(self.slot)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool.release(self.slot)


@dataclass
class _Request:
    slot: PoolSlot
    hops: list
    future: asyncio.Future
    arrived: float
    outputs: list = field(default_factory=list)


class Batcher:
    """Rounds of batched hops across streams (see the module docstring); runs in the event loop."""

    def __init__(self, model: OnnxModel, max_batch: int = 64, wait_s: float = 0.008):
        if model.batch_session is None:
            raise ValueError(f"{model.path.parent}: no batched step graph (model_batch.onnx); re-export the model")
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0, got {max_batch} and {wait_s}")
        self.model, self.max_batch, self.wait_s = model, max_batch, wait_s
        self.pools: dict[int, StatePool] = {}
        self.queues: dict[PoolSlot, deque] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._turn = 0
        self.rounds = self.hops = 0

    def open(self, mics: int, speaker=None) -> PoolSlot:
        """A new stream's slot (its pool made on first use of a mic count); ``speaker``: the
        embedding of a personalized model's target speaker."""
        pool = self.pools.get(mics) or self.pools.setdefault(mics, StatePool(self.model, mics))
        slot = PoolSlot(pool, speaker)
        self.queues[slot] = deque()
        return slot

    def close(self, slot: PoolSlot) -> None:
        """The stream ended: its queued work is dropped (its futures cancelled) and its row freed."""
        for request in self.queues.pop(slot, ()):
            request.future.cancel()
        slot.release()

    async def submit(self, slot: PoolSlot, hops: list[np.ndarray]) -> list[np.ndarray]:
        """Step ``hops`` (in order) of one stream; their outputs, once every one has had its round."""
        if not hops:
            return []
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        slot.last_submit = now = time.monotonic()
        self.queues[slot].append(_Request(slot, hops, future, now))
        self._wake.set()
        return await future

    async def drive(self, slot: PoolSlot, work) -> np.ndarray:
        """Run an engine's ``steps``/``flush_steps`` generator for ``slot``'s stream through the
        rounds (the async counterpart of ``StreamingEnhancer._drive``); the samples it returns."""
        hops = next(work)
        try:
            while True:
                hops = work.send(await self.submit(slot, hops))
        except StopIteration as done:
            return done.value

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def stats(self) -> dict:
        return {"max_batch": self.max_batch, "wait_ms": 1000 * self.wait_s, "rounds": self.rounds,
                "hops": self.hops, "mean_batch": round(self.hops / self.rounds, 2) if self.rounds else None}

    # ------------------------------------------------------------------ the rounds
    def _active(self) -> int:
        """Streams worth waiting for: those that sent a hop within ``ACTIVE_S`` (a live stream sends
        every 10–20 ms; one that paused, or sends rarely, is not waited for)."""
        since = time.monotonic() - ACTIVE_S
        return sum(1 for slot in self.queues if slot.last_submit >= since)

    def _ready(self) -> list[PoolSlot]:
        for slot, queue in self.queues.items():
            while queue and queue[0].future.done():  # its stream stopped waiting (cancelled)
                queue.popleft()
        return [slot for slot, queue in self.queues.items() if queue]

    async def _run(self) -> None:
        while True:
            ready = self._ready()
            if not ready:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.wait_s > 0 and len(ready) < min(self._active(), self.max_batch):
                oldest = min(self.queues[slot][0].arrived for slot in ready)
                remaining = oldest + self.wait_s - time.monotonic()
                if remaining > 0:  # wait for the others, at most until the oldest has waited wait_s
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), remaining)
                    except asyncio.TimeoutError:
                        pass
                    else:
                        continue  # a hop arrived: look again
            self._round(self._ready())  # in the event loop: measured faster than a thread hand-off per call
            await asyncio.sleep(0)  # let the streams' messages in before the next round

    def _round(self, ready: list[PoolSlot]) -> None:
        by_pool: dict[StatePool, list[PoolSlot]] = {}
        if len(ready) > self.max_batch:  # take turns when more streams are ready than a call holds
            self._turn = (self._turn + self.max_batch) % len(ready)
            ready = (ready[self._turn :] + ready[: self._turn])[: self.max_batch]
        for slot in ready:
            by_pool.setdefault(slot.pool, []).append(slot)
        for pool, slots in by_pool.items():
            requests = [self.queues[slot][0] for slot in slots]
            audio = np.stack([request.hops[len(request.outputs)] for request in requests])
            try:
                enhanced = pool.run([slot.slot for slot in slots], audio)
            except Exception as err:  # a defect: every stream in the call hears of it
                for request in requests:
                    self.queues[request.slot].popleft()
                    request.future.set_exception(err)
                continue
            self.rounds += 1
            self.hops += len(slots)
            for request, out in zip(requests, enhanced):
                request.outputs.append(out)
                if len(request.outputs) == len(request.hops):
                    self.queues[request.slot].popleft()
                    request.future.set_result(request.outputs)
