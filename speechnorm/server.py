"""``speechnorm serve``: real-time enhancement over WebSocket, one isolated stream state per connection.

The protocol is documented in ``serve/PROTOCOL.md``. In short: a JSON ``start`` (sample rate,
channels, sample format), then binary PCM messages, each answered by exactly one binary message
of enhanced mono PCM (the samples ready so far, possibly none), in order; ``stop`` flushes the
rest. Errors are JSON messages with a code. The model is loaded once and shared; every
connection has its own ``StreamingEnhancer`` (state, buffers). By default the model runs in the
event loop itself (measured: more concurrent streams than a thread pool's hand-off per message,
``scripts/load_test.py``); ``workers`` > 0 runs it in that many threads instead. In both modes a
message is enhanced in slices of ``SLICE_MS`` of audio, and other streams' work runs between the
slices, so no client can delay another's replies by sending large messages.

Whether a client reads its replies is learned from WebSocket ping/pong, not from kernel buffers:
a pong proves that every reply sent before its ping was read (``ReadReceipts``). A client whose
oldest unread reply is older than ``Limits.send_timeout_s`` is dropped and its socket released.
``GET /health`` reports the streams and their latency.
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
from aiohttp import WSCloseCode, WSMsgType, hdrs, web

from .receipts import ReadReceipts
from .stream import AtRate, StreamingEnhancer, load

log = logging.getLogger("speechnorm.serve")
PROTOCOL_VERSION = 1
STATIC = Path(__file__).resolve().parents[1] / "serve" / "static"
FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}
CLOSE_TRY_AGAIN_LATER = 1013
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


@dataclass
class Limits:
    max_connections: int = 32
    max_message_bytes: int = 1 << 20  # 1 MiB: about 5 s of 48 kHz stereo float
    idle_timeout_s: float = 30.0
    send_timeout_s: float = 5.0  # a client that leaves a reply unread this long is dropped

    @property
    def ping_interval_s(self) -> float:
        """How often read receipts are asked for (a ping) while replies are unread."""
        return min(0.5, self.send_timeout_s / 4)


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
        self.dtype: np.dtype | None = None
        self.receipts = ReadReceipts()
        self.dropped = False

    def start(self, message: dict) -> dict:
        if self.engine is not None:
            raise ProtocolError("already_started", "this connection already streams; send 'stop' before a new 'start'")
        rate, channels, fmt = message.get("sample_rate"), message.get("channels"), message.get("format", "f32le")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise ProtocolError("bad_start", f"format must be one of {sorted(FORMATS)}, got {quote(fmt)}")
        model = self.server.model
        if not isinstance(channels, int) or isinstance(channels, bool) or not model.min_mics <= channels <= model.max_mics:
            raise ProtocolError("bad_start", f"channels must be an integer from {model.min_mics} to {model.max_mics}, "
                                             f"got {quote(channels)}")
        if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 192_000:
            raise ProtocolError("bad_start", f"sample_rate must be an integer from 8000 to 192000 Hz, got {quote(rate)}")
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
        samples = samples.astype(np.float32) / 32768.0 if self.dtype.kind == "i" else samples.astype(np.float32)
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
        out = self.engine.process(samples)
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
                 workers: int = 0, static_dir: Path | None = STATIC, expose_peers: bool = False):
        self.model = load(model_path, backend=backend, threads=1)
        self.limits = limits or Limits()
        # workers=0: run the model in the event loop itself (no thread hand-off per message)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="enhance") if workers > 0 else None
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self.served = 0
        self.slow_consumers_dropped = 0
        self.expose_peers = expose_peers
        # the static files, by name, read once: a request names one of these or gets 404
        self.static_files = {p.name: p for p in sorted(static_dir.iterdir()) if p.is_file()} \
            if static_dir is not None and static_dir.is_dir() else {}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_message_bytes)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/health", self.health)
        if "index.html" in self.static_files:
            app.router.add_get("/", self.index)
        app.router.add_get("/static/{name:.*}", self.static)
        app.on_response_prepare.append(self._no_banner)
        app.on_shutdown.append(self._shutdown)
        return app

    @staticmethod
    async def _no_banner(request: web.Request, response: web.StreamResponse) -> None:
        response.headers[hdrs.SERVER] = "speechnorm"  # not the Python and aiohttp versions

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(self.static_files["index.html"])

    async def static(self, request: web.Request) -> web.FileResponse:
        path = self.static_files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def health(self, request: web.Request) -> web.Response:
        model = self.model
        body = {"status": "ok", "protocol": PROTOCOL_VERSION,
                "model": {"name": model.name, "backend": type(model).__name__, "sample_rate": model.sample_rate,
                          "latency_ms": model.latency_ms, "mics": [model.min_mics, model.max_mics]},
                "connections": {"active": len(self.sessions), "max": self.limits.max_connections, "served": self.served,
                                "slow_consumers_dropped": self.slow_consumers_dropped},
                "streams": [s.stats.summary(peer=self.expose_peers) for s in self.sessions.values()]}
        return web.json_response(body)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        # aiohttp refuses a message of max_msg_size bytes or more; the protocol allows "at most" the limit
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_message_bytes + 1, heartbeat=None, autoping=False)
        await ws.prepare(request)
        if len(self.sessions) >= self.limits.max_connections:
            await self._send_error(ws, ProtocolError("server_full", f"{self.limits.max_connections} streams are active; try again later"))
            await self._close(ws, request, CLOSE_TRY_AGAIN_LATER, b"server full")
            return ws
        stats = StreamStats(next(self._ids), request.remote or "?")
        session = self.sessions[stats.id] = Session(self, stats)
        self.served += 1
        serving = asyncio.create_task(self._serve(ws, request, session))
        watching = asyncio.create_task(self._watch(ws, request, session, serving))
        try:
            await serving
        except (ConnectionError, asyncio.CancelledError):  # a reset, or dropped by the watch
            pass
        finally:
            serving.cancel()
            watching.cancel()
            del self.sessions[stats.id]  # a dropped client frees its state
            await self._close(ws, request)
        return ws

    async def _close(self, ws: web.WebSocketResponse, request: web.Request, code: int = WSCloseCode.OK,
                     message: bytes = b"") -> None:
        """Close cleanly if the peer lets us within a second; else release the socket regardless."""
        if not ws.closed:
            try:
                await asyncio.wait_for(ws.close(code=code, message=message), 1.0)
            except (ConnectionError, asyncio.TimeoutError):
                pass
        if request.transport is not None and not ws.closed:
            request.transport.abort()

    async def _watch(self, ws: web.WebSocketResponse, request: web.Request, session: Session,
                     serving: asyncio.Task) -> None:
        """Ask for read receipts while replies are unread; drop a client that leaves one unread too long."""
        limits, ping = self.limits, None
        while not serving.done():
            await asyncio.sleep(limits.ping_interval_s / 2)
            now = time.monotonic()
            if session.receipts.oldest_unread_age(now) > limits.send_timeout_s:
                self._drop(request, session, serving)
                return
            if ping is None or ping.done():  # a ping still stuck in a full buffer: no need for another
                number = session.receipts.ping_due(now, limits.ping_interval_s)
                if number is not None:
                    ping = asyncio.create_task(self._ping(ws, number))

    @staticmethod
    async def _ping(ws: web.WebSocketResponse, number: int) -> None:
        try:
            await ws.ping(number.to_bytes(8, "big"))
        except (ConnectionError, RuntimeError):
            pass

    def _drop(self, request: web.Request, session: Session, serving: asyncio.Task | None) -> None:
        """A slow consumer: stop its work and release its socket now (its unread replies are discarded)."""
        log.info("stream %d: slow consumer (replies unread for over %g s), dropped", session.stats.id,
                 self.limits.send_timeout_s)
        self.slow_consumers_dropped += 1
        session.dropped = True
        if serving is not None:
            serving.cancel()
        if request.transport is not None:
            request.transport.abort()

    async def _serve(self, ws: web.WebSocketResponse, request: web.Request, session: Session) -> None:
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
            if msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
                continue
            if msg.type == WSMsgType.PONG:
                session.receipts.pong(msg.data)
                continue
            received = time.perf_counter()
            try:
                if msg.type == WSMsgType.BINARY:
                    samples = session.decode(msg.data)
                    reply = b"".join([await self._compute(session.process, piece) for piece in session.slices(samples)])
                    await self._send(ws, session, reply)
                    session.stats.messages += 1
                    session.stats.latencies_ms.append(1000 * (time.perf_counter() - received))
                elif msg.type == WSMsgType.TEXT:
                    await self._text(ws, session, msg.data)
            except ProtocolError as err:
                session.stats.errors += 1
                await self._send_error(ws, err)
                if err.fatal:
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=err.code.encode())
                    return
            except asyncio.TimeoutError:  # a send blocked for the whole limit: the client stopped reading
                self._drop(request, session, None)
                return
            except ConnectionError:  # the client reset the connection
                return
            except Exception:  # a defect of ours: say so to the client, log it for us, never a silent close
                log.exception("stream %d: internal error on a %s message", session.stats.id, msg.type.name)
                await self._send_error(ws, ProtocolError("internal_error", "the server failed on this message"))
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
                return

    async def _text(self, ws, session: Session, data: str) -> None:
        try:
            message = json.loads(data)
        except RecursionError:
            raise ProtocolError("bad_json", "JSON nested too deeply") from None
        except ValueError as err:  # not JSON, or a number too long to convert
            raise ProtocolError("bad_json", f"not usable JSON: {str(err)[:200]}") from None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "start":
            await self._send(ws, session, session.start(message))
        elif kind == "stop":
            tail, reply = await self._compute(session.stop)
            await self._send(ws, session, tail)
            await self._send(ws, session, reply)
        elif kind == "stats":
            await self._send(ws, session, {"type": "stats", **session.stats.summary()})
        else:
            raise ProtocolError("bad_message", f"unknown message type {quote(kind)}; expected 'start', 'stop' or 'stats'")

    async def _compute(self, fn, *args):
        """One slice of model work: in the event loop (then yield to the other streams), or in a worker thread."""
        if self.executor is None:
            result = fn(*args)
            await asyncio.sleep(0)
            return result
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _send(self, ws: web.WebSocketResponse, session: Session, payload: bytes | dict) -> None:
        send = ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_str(json.dumps(payload))
        await asyncio.wait_for(send, self.limits.send_timeout_s)
        session.receipts.sent(time.monotonic())

    async def _send_error(self, ws: web.WebSocketResponse, err: ProtocolError) -> None:
        if ws.closed:
            return
        try:
            await asyncio.wait_for(ws.send_str(json.dumps({"type": "error", "code": err.code, "message": str(err)})),
                                   self.limits.send_timeout_s)
        except (ConnectionError, asyncio.TimeoutError):
            pass

    async def _shutdown(self, app: web.Application) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
          backend: str = "auto", workers: int = 0, expose_peers: bool = False) -> None:
    server = EnhancementServer(model_path, limits, backend=backend, workers=workers, expose_peers=expose_peers)
    print(f"speechnorm serve: {server.model.name} ({type(server.model).__name__}) on http://{host}:{port}/ "
          f"(WebSocket /ws, health /health; protocol v{PROTOCOL_VERSION}, serve/PROTOCOL.md)", flush=True)
    web.run_app(server.app(), host=host, port=port, print=None)
