"""``StreamingEnhancer``: any number of samples in, what is ready out, one stream's state.

    engine = StreamingEnhancer.from_path("models/tac_gru_online_small_v2", mics=4)
    for chunk in chunks:                 # (M, n) float32 at the model's rate, any n >= 0
        out = engine.process(chunk)      # (k,): the enhanced samples ready so far
    out = engine.flush()                 # the rest; in total exactly as many samples as went in

The output is delay-compensated: sample i of the output estimates sample i of the reference mic
(the model's fixed delay is dropped at the start and flushed at the end). ``AtRate`` wraps an
engine for audio at another sample rate (resampling in and out, one soxr path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.resample import StreamResampler
from .backends import ModelInfo, OnnxModel, TorchModel, load

#: Float audio is expected in [-1, 1]; far beyond is not audio (e.g. unscaled integer PCM).
MAX_ABS_SAMPLE = 64.0


class StreamingEnhancer:
    """One stream through a loaded model (shared between engines); see the module docstring."""

    def __init__(self, model: OnnxModel | TorchModel, mics: int, stream=None, speaker=None):
        """``stream``: where this engine's hops are stepped (default ``model.open(mics, speaker)``,
        its own state); e.g. a slot of a batched pool (``speechnorm.stream.batch``). ``speaker``:
        the target speaker's embedding, for a personalized model (``speechnorm.speaker``)."""
        model.check_mics(mics)
        self.model: ModelInfo = model
        self.mics = mics
        self.hop = model.hop
        self._stream = model.open(mics, speaker=speaker) if stream is None else stream
        self._pending = np.zeros((mics, self.hop), np.float32)
        self.reset()

    @classmethod
    def from_path(cls, path: str | Path, mics: int, backend: str = "auto", threads: int = 1,
                  speaker=None) -> "StreamingEnhancer":
        return cls(load(path, backend=backend, threads=threads), mics, speaker=speaker)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def reset(self) -> None:
        """Forget the stream: initial state, nothing buffered, counters at zero."""
        self._stream.reset()
        self._filled = 0
        self._skip = self.model.delay_samples  # leading output samples that precede the input
        self.samples_in = self.samples_out = 0

    def check(self, chunk) -> np.ndarray:
        """``chunk`` as (M, n) float32, or a ValueError saying what is wrong (nothing is consumed)."""
        if not isinstance(chunk, np.ndarray):
            chunk = np.asarray(chunk)
        if chunk.ndim == 1 and self.mics == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or chunk.shape[0] != self.mics:
            raise ValueError(f"expected audio of shape (mics={self.mics}, samples), got {chunk.shape}")
        if chunk.dtype.kind != "f":
            raise ValueError(f"expected float audio in [-1, 1], got {chunk.dtype}; scale integer PCM first (x / 32768 for 16-bit)")
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if chunk.size:
            peak = float(np.abs(chunk).max())  # NaN if any sample is NaN, inf if any is infinite
            if not peak <= MAX_ABS_SAMPLE:
                if not np.isfinite(peak):
                    raise ValueError("audio contains NaN or inf samples")
                raise ValueError(f"audio peaks at {peak:g}, far beyond [-1, 1]; is it unscaled integer PCM?")
        return chunk

    def process(self, chunk) -> np.ndarray:
        """(M, n) at the model's rate -> the enhanced samples now ready (k,), k >= 0."""
        return self._drive(self.steps(chunk))

    def flush(self) -> np.ndarray:
        """The remaining output (zeros fed past the end), so that samples_out == samples_in; then reset."""
        return self._drive(self.flush_steps())

    # The work of ``process`` and ``flush`` as generators: each yields the hops to step (a list
    # of (M, hop) arrays, possibly empty), is sent their enhanced outputs (a list of (hop,)
    # arrays, in order), and returns the samples ready. ``process``/``flush`` step the hops
    # through this engine's own stream; a server gathers many engines' hops into one batched call.
    def steps(self, chunk, checked: bool = False):
        """``checked``: ``chunk`` is what ``check`` returned (a server checks a message once)."""
        hops = self._feed(chunk if checked else self.check(chunk))
        outputs = yield hops
        return self._take(outputs)

    def flush_steps(self):
        owed = self.samples_in - self.samples_out
        hops, produced, skip = [], 0, self._skip
        while owed > produced:  # the pending samples, then silence, until the delay is flushed
            hop = np.zeros_like(self._pending)
            if not hops:
                hop[:, : self._filled] = self._pending[:, : self._filled]
            hops.append(hop)
            produced += self.hop - min(skip, self.hop)
            skip -= min(skip, self.hop)
        outputs = yield hops
        out = self._take(outputs)[:owed]
        self.reset()
        return out

    def _drive(self, work) -> np.ndarray:
        """Run ``steps``/``flush_steps`` through this engine's stream, one hop at a time."""
        step = self._stream.step
        hops = next(work)
        try:
            while True:
                hops = work.send([step(hop).copy() for hop in hops])  # step's output is a reused buffer
        except StopIteration as done:
            return done.value

    def _feed(self, chunk: np.ndarray) -> list[np.ndarray]:
        """Buffer checked samples; the hops they complete, in order."""
        count, taken, hops = chunk.shape[1], 0, []
        while taken < count:
            take = min(self.hop - self._filled, count - taken)
            self._pending[:, self._filled : self._filled + take] = chunk[:, taken : taken + take]
            self._filled += take
            taken += take
            if self._filled == self.hop:
                hops.append(self._pending.copy())
                self._filled = 0
        self.samples_in += count
        return hops

    def _take(self, outputs: list[np.ndarray]) -> np.ndarray:
        """The enhanced hops -> the output samples, the model's delay dropped at the start."""
        out = np.empty(len(outputs) * self.hop, np.float32)
        written = 0
        for hop_out in outputs:
            written = self._emit(hop_out, out, written)
        self.samples_out += written
        return out[:written]

    def _emit(self, hop_out: np.ndarray, out: np.ndarray, written: int) -> int:
        start = min(self._skip, self.hop)
        self._skip -= start
        n = self.hop - start
        out[written : written + n] = hop_out[start:]
        return written + n


class AtRate:
    """An engine for audio at ``rate``: resample in, enhance, resample out, same sample count out as in."""

    def __init__(self, engine: StreamingEnhancer, rate: int):
        if not isinstance(rate, (int, np.integer)) or not 8000 <= rate <= 192_000:
            raise ValueError(f"sample rate must be an integer from 8000 to 192000 Hz, got {rate!r}")
        self.engine, self.rate = engine, int(rate)
        self._in = StreamResampler(self.rate, engine.sample_rate, engine.mics)
        self._out = StreamResampler(engine.sample_rate, self.rate, 1)
        self.samples_in = self.samples_out = 0

    def process(self, chunk, checked: bool = False) -> np.ndarray:
        """``checked``: ``chunk`` is what ``engine.check`` returned (a server checks a message once)."""
        return self.engine._drive(self.steps(chunk, checked))

    def flush(self) -> np.ndarray:
        return self.engine._drive(self.flush_steps())

    def steps(self, chunk, checked: bool = False):
        """``process`` as a generator of hops (see ``StreamingEnhancer.steps``)."""
        if not checked:
            chunk = self.engine.check(chunk)  # refuse bad audio before the resampler sees it
        # resampled checked audio stays finite and within the limit: not checked again
        enhanced = yield from self.engine.steps(self._in.process(chunk), checked=True)
        return self._account(self._out.process(enhanced[None])[0], chunk.shape[1])

    def flush_steps(self):
        """``flush`` as a generator of hops."""
        first = yield from self.engine.steps(self._in.flush())
        rest = yield from self.engine.flush_steps()
        tail = self._out.process(np.concatenate((first, rest))[None], last=True)[0]
        owed = self.samples_in - self.samples_out
        tail = np.pad(tail, (0, max(0, owed - tail.size)))[:owed]  # exact length: resampling rounds
        self.samples_out += tail.size
        self.reset()
        return tail

    def _account(self, out: np.ndarray, consumed: int) -> np.ndarray:
        self.samples_in += consumed
        out = out[: max(0, self.samples_in - self.samples_out)]  # never ahead of the input
        self.samples_out += out.size
        return out

    def reset(self) -> None:
        self.engine.reset()
        self._in.reset()
        self._out.reset()
        self.samples_in = self.samples_out = 0
