"""One WebSocket connection's stream in ``speechnorm serve``: the protocol's messages, checked and
answered, and the stream's engine (state, buffers). Never touches another connection's state."""

from __future__ import annotations

import base64
import binascii
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .receipts import ReadReceipts
from .stream import AtRate, StreamingEnhancer

PROTOCOL_VERSION = 2
#: The protocol versions a client may ask for in ``start`` (``"protocol"``; absent: 1). Version 2
#: adds the target speaker of a personalized model (``"speaker"``); version 1 clients are unchanged.
PROTOCOLS = (1, 2)
FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
#: Model work per scheduling turn: a message is enhanced in slices this long (2 hops), other
#: streams' work runs in between.
SLICE_MS = 20
#: The longest repr of a client's value quoted back in an error message.
QUOTE_CHARS = 60


def quote(value) -> str:
    """A client's value as an error message shows it: repr, cut short (never a 1 MiB echo)."""
    try:
        text = repr(value)
    except ValueError:  # e.g. an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


class ProtocolError(Exception):
    """A message the protocol does not allow; ``fatal`` ones close the connection."""

    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(message)
        self.code, self.fatal = code, fatal


@dataclass
class StreamStats:
    id: int
    peer: str
    started: float = field(default_factory=time.time)
    sample_rate: int = 0
    channels: int = 0
    format: str = ""
    samples_in: int = 0
    samples_out: int = 0
    messages: int = 0
    errors: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=2000))

    def summary(self, peer: bool = False) -> dict:
        """Counters and latency; the peer address only when ``peer`` (operators' choice, not clients')."""
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)) if lat else (lambda q: None)
        return {"id": self.id, **({"peer": self.peer} if peer else {}), "sample_rate": self.sample_rate, "channels": self.channels,
                "format": self.format, "seconds_in": self.samples_in / self.sample_rate if self.sample_rate else 0.0,
                "samples_in": self.samples_in, "samples_out": self.samples_out, "messages": self.messages,
                "errors": self.errors, "latency_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": lat[-1] if lat else None}}


class Session:
    """One connection's stream: parses messages, owns the engine. Never touches another's state."""

    def __init__(self, server: "EnhancementServer", stats: StreamStats):
        self.server, self.stats = server, stats
        self.engine: AtRate | None = None
        self.slot = None  # the stream's row of the server's batched pool, when it batches
        self.dtype: np.dtype | None = None
        self.receipts = ReadReceipts()
        self.last_active = time.monotonic()  # when the last message came in
        self.busy_since: float | None = None  # set while a message is being answered
        self.idle_out = False  # ended by the idle limit
        self.transport = None  # the connection's socket (set by the server), to see whether a send can wait

    def speaker_request(self, message: dict):
        """The ``start`` message's ``speaker``, checked: None (a plain model), an embedding (D,)
        float32, or enrollment audio to embed, as (samples (n,) float32, sample_rate)."""
        model, speaker = self.server.model, message.get("speaker")
        if speaker is None:
            if model.speaker_dim:
                raise ProtocolError("bad_start", f"model {model.name} is personalized: give the target speaker in 'start' as "
                                                 "'speaker': {'embedding': [...]} or {'audio': base64 PCM, 'sample_rate', "
                                                 "'format'} (protocol 2)")
            return None
        if not model.speaker_dim:
            raise ProtocolError("bad_start", f"model {model.name} is not personalized: it takes no 'speaker'")
        if not isinstance(speaker, dict) or ("embedding" in speaker) == ("audio" in speaker):
            raise ProtocolError("bad_start", "'speaker' must be an object with either 'embedding' or 'audio'")
        if "embedding" in speaker:
            values = speaker["embedding"]
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ProtocolError("bad_start", f"speaker.embedding must be a list of {model.speaker_dim} finite numbers "
                                                 f"(`speechnorm enroll`), got {quote(values)}")
            try:  # its size and values: the runtime's own check
                return model.check_speaker(values)
            except (ValueError, OverflowError) as err:
                raise ProtocolError("bad_start", f"speaker.embedding: {err}") from None
        rate, fmt, data = speaker.get("sample_rate"), speaker.get("format", "f32le"), speaker["audio"]
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise ProtocolError("bad_start", f"speaker.format must be one of {sorted(FORMATS)}, got {quote(fmt)}")
        if not isinstance(rate, int) or isinstance(rate, bool) or not 16000 <= rate <= 192_000:
            raise ProtocolError("bad_start", f"speaker.sample_rate must be an integer from 16000 to 192000 Hz (the speaker "
                                             f"encoder hears up to 8 kHz), got {quote(rate)}")
        try:
            raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except (binascii.Error, ValueError):
            raw = None
        if raw is None:
            raise ProtocolError("bad_start", "speaker.audio must be base64 of mono PCM in speaker.format")
        if len(raw) % FORMATS[fmt].itemsize:
            raise ProtocolError("bad_start", f"speaker.audio is {len(raw)} bytes: not a whole number of {fmt} samples")
        samples = np.frombuffer(raw, FORMATS[fmt]).astype(np.float32)
        return (samples / 32768.0 if fmt == "s16le" else samples), rate

    def start(self, message: dict, speaker: np.ndarray | None = None, enrolled: dict | None = None) -> dict:
        """Begin the stream (``speaker``: the embedding ``speaker_request`` gave or enrollment computed;
        ``enrolled``: what enrollment found, echoed in ``ready``)."""
        if self.engine is not None:
            raise ProtocolError("already_started", "this connection already streams; send 'stop' before a new 'start'")
        version = message.get("protocol", 1)
        if version not in PROTOCOLS or isinstance(version, bool):
            raise ProtocolError("bad_start", f"protocol must be one of {list(PROTOCOLS)}, got {quote(version)}")
        rate, channels, fmt = message.get("sample_rate"), message.get("channels"), message.get("format", "f32le")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise ProtocolError("bad_start", f"format must be one of {sorted(FORMATS)}, got {quote(fmt)}")
        model = self.server.model
        if not isinstance(channels, int) or isinstance(channels, bool) or not model.min_mics <= channels <= model.max_mics:
            raise ProtocolError("bad_start", f"channels must be an integer from {model.min_mics} to {model.max_mics}, "
                                             f"got {quote(channels)}")
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 192_000:
            raise ProtocolError("bad_start", f"sample_rate must be an integer from 8000 to 192000 Hz, got {quote(rate)}")
        if speaker is None:
            speaker = self.speaker_request(message)  # checked either way: a plain model refuses a speaker
            if isinstance(speaker, tuple):
                raise ProtocolError("bad_start", "enrollment audio must be embedded before start (the server does)")
        batcher = self.server.batcher
        try:
            self.slot = batcher.open(channels, speaker=speaker) if batcher is not None else None
            stream_speaker = speaker if self.slot is None else None  # a pool slot holds it in its row
            self.engine = AtRate(StreamingEnhancer(model, channels, stream=self.slot, speaker=stream_speaker), rate)
        except ValueError as err:
            self.close()
            raise ProtocolError("bad_start", str(err)) from None
        self.dtype = FORMATS[fmt]
        self.stats.sample_rate, self.stats.channels, self.stats.format = rate, channels, fmt
        ready = {"type": "ready", "protocol": version, "stream": self.stats.id, "model": model.name,
                 "model_sample_rate": model.sample_rate, "hop_ms": 1000 * model.hop / model.sample_rate,
                 "latency_ms": model.latency_ms, "max_message_bytes": self.server.limits.max_message_bytes}
        if speaker is not None:  # the embedding in use: a client may send it next time instead of audio
            ready["speaker"] = {"embedding": [round(float(v), 7) for v in speaker], **(enrolled or {})}
        return ready

    def decode(self, payload: bytes) -> np.ndarray:
        """Interleaved PCM -> (channels, n) float32; refuses a partial frame before anything is consumed."""
        if self.engine is None:
            raise ProtocolError("not_started", "send a 'start' message before audio")
        frame_bytes = self.dtype.itemsize * self.stats.channels
        if len(payload) % frame_bytes:
            raise ProtocolError("bad_frame", f"{len(payload)} bytes is not a whole number of {self.stats.channels}-channel "
                                             f"{self.stats.format} frames ({frame_bytes} bytes each)")
        samples = np.frombuffer(payload, dtype=self.dtype).reshape(-1, self.stats.channels).T.astype(np.float32, order="C")
        if self.dtype.kind == "i":
            samples /= 32768.0
        try:  # the whole message, before any of it is consumed: a refused message changes nothing
            return self.engine.engine.check(samples)
        except ValueError as err:
            raise ProtocolError("bad_audio", str(err)) from None

    def slices(self, samples: np.ndarray) -> list[np.ndarray]:
        """``samples`` (channels, n) in pieces of ``SLICE_MS``: the unit of model work per turn."""
        step = max(1, self.stats.sample_rate * SLICE_MS // 1000)
        return [samples[:, start : start + step] for start in range(0, samples.shape[1], step)] or [samples]

    def encode(self, enhanced: np.ndarray) -> bytes:
        if self.dtype.kind == "i":
            return np.clip(np.round(enhanced * 32768.0), -32768, 32767).astype(self.dtype).tobytes()
        return enhanced.astype(self.dtype).tobytes()

    def process(self, samples: np.ndarray) -> bytes:
        """One slice of checked audio through the engine -> encoded enhanced samples."""
        out = self.engine.process(samples, checked=True)
        self.stats.samples_in += samples.shape[1]
        self.stats.samples_out += out.size
        return self.encode(out)

    async def process_batched(self, samples: np.ndarray) -> bytes:
        """A whole message of checked audio, its hops stepped in the server's batched rounds."""
        out = await self.server.batcher.drive(self.slot, self.engine.steps(samples, checked=True))
        self.stats.samples_in += samples.shape[1]
        self.stats.samples_out += out.size
        return self.encode(out)

    def stop(self) -> tuple[bytes, dict]:
        tail = self._stopping().flush()
        return self._stopped(tail)

    async def stop_batched(self) -> tuple[bytes, dict]:
        tail = await self.server.batcher.drive(self.slot, self._stopping().flush_steps())
        return self._stopped(tail)

    def _stopping(self) -> AtRate:
        if self.engine is None:
            raise ProtocolError("not_started", "nothing to stop: no stream was started")
        return self.engine

    def _stopped(self, tail: np.ndarray) -> tuple[bytes, dict]:
        self.stats.samples_out += tail.size
        reply = {"type": "stopped", "samples_in": self.stats.samples_in, "samples_out": self.stats.samples_out}
        self.engine = None
        self.close()
        return self.encode(tail), reply

    def close(self) -> None:
        """Free the stream's row of the batched pool (its queued work dropped); idempotent."""
        if self.slot is not None:
            self.server.batcher.close(self.slot)
            self.slot = None


