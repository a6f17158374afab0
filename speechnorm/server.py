"""``speechnorm serve``: real-time enhancement over WebSocket, one isolated stream state per connection.

The protocol is documented in ``serve/PROTOCOL.md``. In short: a JSON ``start`` (sample rate,
channels, sample format), then binary PCM messages, each answered by exactly one binary message
of enhanced mono PCM (the samples ready so far, possibly none), in order; ``stop`` flushes the
rest. Errors are JSON messages with a code. The model is loaded once and shared; every
connection has its own ``StreamingEnhancer`` (state, buffers). A message costs a fraction of a
millisecond of model time, so by default it runs in the event loop itself (measured: more
concurrent streams than a thread pool's hand-off per message, ``scripts/load_test.py``);
``workers`` > 0 runs the model in that many threads instead. ``GET /health`` reports the streams and their latency.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from .stream import AtRate, StreamingEnhancer, load

log = logging.getLogger("speechnorm.serve")
PROTOCOL_VERSION = 1
STATIC = Path(__file__).resolve().parents[1] / "serve" / "static"
FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
CLOSE_TRY_AGAIN_LATER = 1013


@dataclass
class Limits:
    max_connections: int = 32
    max_message_bytes: int = 1 << 20  # 1 MiB: about 5 s of 48 kHz stereo float
    idle_timeout_s: float = 30.0
    send_timeout_s: float = 5.0  # a client that does not read its replies for this long is dropped


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

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)) if lat else (lambda q: None)
        return {"id": self.id, "peer": self.peer, "sample_rate": self.sample_rate, "channels": self.channels,
                "format": self.format, "seconds_in": self.samples_in / self.sample_rate if self.sample_rate else 0.0,
                "samples_in": self.samples_in, "samples_out": self.samples_out, "messages": self.messages,
                "errors": self.errors, "latency_ms": {"p50": pick(0.5), "p99": pick(0.99), "max": lat[-1] if lat else None}}


class Session:
    """One connection's stream: parses messages, owns the engine. Never touches another's state."""

    def __init__(self, server: "EnhancementServer", stats: StreamStats):
        self.server, self.stats = server, stats
        self.engine: AtRate | None = None
        self.dtype: np.dtype | None = None

    def start(self, message: dict) -> dict:
        if self.engine is not None:
            raise ProtocolError("already_started", "this connection already streams; send 'stop' before a new 'start'")
        rate, channels, fmt = message.get("sample_rate"), message.get("channels"), message.get("format", "f32le")
        if fmt not in FORMATS:
            raise ProtocolError("bad_start", f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
        model = self.server.model
        if not isinstance(channels, int) or isinstance(channels, bool) or not model.min_mics <= channels <= model.max_mics:
            raise ProtocolError("bad_start", f"channels must be an integer from {model.min_mics} to {model.max_mics}, got {channels!r}")
        if isinstance(rate, bool):
            rate = None
        try:
            self.engine = AtRate(StreamingEnhancer(model, channels), rate)
        except ValueError as err:
            raise ProtocolError("bad_start", str(err)) from None
        self.dtype = FORMATS[fmt]
        self.stats.sample_rate, self.stats.channels, self.stats.format = rate, channels, fmt
        return {"type": "ready", "protocol": PROTOCOL_VERSION, "stream": self.stats.id, "model": model.name,
                "model_sample_rate": model.sample_rate, "hop_ms": 1000 * model.hop / model.sample_rate,
                "latency_ms": model.latency_ms, "max_message_bytes": self.server.limits.max_message_bytes}

    def decode(self, payload: bytes) -> np.ndarray:
        """Interleaved PCM -> (channels, n) float32; refuses a partial frame before anything is consumed."""
        if self.engine is None:
            raise ProtocolError("not_started", "send a 'start' message before audio")
        frame_bytes = self.dtype.itemsize * self.stats.channels
        if len(payload) % frame_bytes:
            raise ProtocolError("bad_frame", f"{len(payload)} bytes is not a whole number of {self.stats.channels}-channel "
                                             f"{self.stats.format} frames ({frame_bytes} bytes each)")
        samples = np.frombuffer(payload, dtype=self.dtype).reshape(-1, self.stats.channels).T
        if self.dtype.kind == "i":
            return samples.astype(np.float32) / 32768.0
        return samples.astype(np.float32)

    def encode(self, enhanced: np.ndarray) -> bytes:
        if self.dtype.kind == "i":
            return np.clip(np.round(enhanced * 32768.0), -32768, 32767).astype(self.dtype).tobytes()
        return enhanced.astype(self.dtype).tobytes()

    def process(self, samples: np.ndarray) -> bytes:
        try:
            out = self.engine.process(samples)
        except ValueError as err:  # bad audio: refused before the state changed
            raise ProtocolError("bad_audio", str(err)) from None
        self.stats.samples_in += samples.shape[1]
        self.stats.samples_out += out.size
        return self.encode(out)

    def stop(self) -> tuple[bytes, dict]:
        if self.engine is None:
            raise ProtocolError("not_started", "nothing to stop: no stream was started")
        tail = self.engine.flush()
        self.stats.samples_out += tail.size
        reply = {"type": "stopped", "samples_in": self.stats.samples_in, "samples_out": self.stats.samples_out}
        self.engine = None
        return self.encode(tail), reply


class EnhancementServer:
    def __init__(self, model_path: str | Path, limits: Limits | None = None, backend: str = "auto",
                 workers: int = 0, static_dir: Path | None = STATIC):
        self.model = load(model_path, backend=backend, threads=1)
        self.limits = limits or Limits()
        # workers=0: run the model in the event loop itself (no thread hand-off per message)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="enhance") if workers > 0 else None
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self.served = 0
        self.slow_consumers_dropped = 0
        self.static_dir = static_dir

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_message_bytes)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/health", self.health)
        if self.static_dir is not None and self.static_dir.is_dir():
            app.router.add_get("/", self.index)
            app.router.add_static("/static/", self.static_dir)
        app.on_shutdown.append(self._shutdown)
        return app

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(self.static_dir / "index.html")

    async def health(self, request: web.Request) -> web.Response:
        model = self.model
        body = {"status": "ok", "protocol": PROTOCOL_VERSION,
                "model": {"name": model.name, "backend": type(model).__name__, "sample_rate": model.sample_rate,
                          "latency_ms": model.latency_ms, "mics": [model.min_mics, model.max_mics]},
                "connections": {"active": len(self.sessions), "max": self.limits.max_connections, "served": self.served,
                                "slow_consumers_dropped": self.slow_consumers_dropped},
                "streams": [s.stats.summary() for s in self.sessions.values()]}
        return web.json_response(body)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_message_bytes, heartbeat=None)
        await ws.prepare(request)
        if len(self.sessions) >= self.limits.max_connections:
            await self._send_error(ws, ProtocolError("server_full", f"{self.limits.max_connections} streams are active; try again later"))
            await ws.close(code=CLOSE_TRY_AGAIN_LATER, message=b"server full")
            return ws
        stats = StreamStats(next(self._ids), request.remote or "?")
        session = self.sessions[stats.id] = Session(self, stats)
        self.served += 1
        try:
            await self._serve(ws, session)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            del self.sessions[stats.id]  # a dropped client frees its state
            if not ws.closed:
                await ws.close()
        return ws

    async def _serve(self, ws: web.WebSocketResponse, session: Session) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                msg = await ws.receive(timeout=self.limits.idle_timeout_s)
            except asyncio.TimeoutError:
                await self._send_error(ws, ProtocolError("idle_timeout", f"nothing received for {self.limits.idle_timeout_s:g} s"))
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"idle")
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            if msg.type == WSMsgType.ERROR:  # e.g. over max_message_bytes: aiohttp closes with 1009
                log.info("stream %d: %s", session.stats.id, ws.exception())
                return
            received = time.perf_counter()
            try:
                if msg.type == WSMsgType.BINARY:
                    samples = session.decode(msg.data)
                    reply = await self._compute(loop, session.process, samples)
                    await self._send(ws, reply)
                    session.stats.messages += 1
                    session.stats.latencies_ms.append(1000 * (time.perf_counter() - received))
                elif msg.type == WSMsgType.TEXT:
                    await self._text(ws, session, msg.data, loop)
            except ProtocolError as err:
                session.stats.errors += 1
                await self._send_error(ws, err)
                if err.fatal:
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=err.code.encode())
                    return
            except asyncio.TimeoutError:  # the client stopped reading: drop it rather than buffer without end
                log.info("stream %d: slow consumer, closing", session.stats.id)
                self.slow_consumers_dropped += 1
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"slow consumer")
                return

    async def _text(self, ws, session: Session, data: str, loop) -> None:
        try:
            message = json.loads(data)
        except json.JSONDecodeError as err:
            raise ProtocolError("bad_json", f"not JSON: {err}") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "start":
            await self._send(ws, session.start(message))
        elif kind == "stop":
            tail, reply = await self._compute(loop, session.stop)
            await self._send(ws, tail)
            await self._send(ws, reply)
        elif kind == "stats":
            await self._send(ws, {"type": "stats", **session.stats.summary()})
        else:
            raise ProtocolError("bad_message", f"unknown message type {kind!r}; expected 'start', 'stop' or 'stats'")

    async def _compute(self, loop, fn, *args):
        if self.executor is None:
            return fn(*args)
        return await loop.run_in_executor(self.executor, fn, *args)

    async def _send(self, ws: web.WebSocketResponse, payload: bytes | dict) -> None:
        send = ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_str(json.dumps(payload))
        await asyncio.wait_for(send, self.limits.send_timeout_s)

    async def _send_error(self, ws: web.WebSocketResponse, err: ProtocolError) -> None:
        if ws.closed:
            return
        try:
            await self._send(ws, {"type": "error", "code": err.code, "message": str(err)})
        except (ConnectionResetError, asyncio.TimeoutError):
            pass

    async def _shutdown(self, app: web.Application) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
          backend: str = "auto", workers: int = 0) -> None:
    server = EnhancementServer(model_path, limits, backend=backend, workers=workers)
    print(f"speechnorm serve: {server.model.name} ({type(server.model).__name__}) on http://{host}:{port}/ "
          f"(WebSocket /ws, health /health; protocol v{PROTOCOL_VERSION}, serve/PROTOCOL.md)", flush=True)
    web.run_app(server.app(), host=host, port=port, print=None)
