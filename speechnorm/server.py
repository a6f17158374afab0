"""``speechnorm serve``: real-time enhancement over WebSocket, one isolated stream state per connection.

The protocol is documented in ``serve/PROTOCOL.md``. In short: a JSON ``start`` (sample rate,
channels, sample format), then binary PCM messages, each answered by exactly one binary message
of enhanced mono PCM (the samples ready so far, possibly none), in order; ``stop`` flushes the
rest. Errors are JSON messages with a code. The model is loaded once and shared; every
connection has its own ``StreamingEnhancer`` (state, buffers). By default the model runs in the
event loop itself (measured: more concurrent streams than a thread pool's hand-off per message,
``scripts/load_test.py``); ``workers`` > 0 runs it in that many threads instead.

When the model has a batched step graph (``model_batch.onnx``), the streams' hops are *batched*:
every message's hops go to one ``Batcher`` (``speechnorm.stream.batch``), whose rounds run the hops
ready across streams of one mic count in one onnxruntime call (at most ``max_batch``, after
waiting at most ``batch_wait_s`` for the other streams), one hop per stream per round, so a long
message spreads over rounds and delays nobody. ``max_batch=1`` (or ``workers`` > 0) keeps one call
per stream and hop; then a message is enhanced in slices of ``SLICE_MS`` of audio, and other
streams' work runs between the slices, so no client can delay another's replies by sending large
messages.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, hdrs, web

from .session import FORMATS, PROTOCOL_VERSION, PROTOCOLS, SLICE_MS, ProtocolError, Session, StreamStats, quote  # noqa: F401
from .stream import load
from .stream.backends import OnnxModel

log = logging.getLogger("speechnorm.serve")
STATIC = Path(__file__).resolve().parents[1] / "serve" / "static"
CLOSE_TRY_AGAIN_LATER = 1013


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


class EnhancementServer:
    def __init__(self, model_path: str | Path, limits: Limits | None = None, backend: str = "auto",
                 workers: int = 0, static_dir: Path | None = STATIC, expose_peers: bool = False,
                 board=None, id_start: int = 1, id_step: int = 1, max_batch: int = 64,
                 batch_wait_s: float = 0.008):
        self.model = load(model_path, backend=backend, threads=1)
        self.batcher = None
        if max_batch > 1 and workers == 0 and isinstance(self.model, OnnxModel) and self.model.batch_session is not None:
            from .stream.batch import Batcher

            self.batcher = Batcher(self.model, max_batch=max_batch, wait_s=batch_wait_s)
        self.limits = limits or Limits()
        # workers=0: run the model in the event loop itself (no thread hand-off per message)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="enhance") if workers > 0 else None
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(id_start, id_step)  # unique across the processes of a pool
        self.board = board  # a server_pool.HealthBoard when several processes share the port
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
        if self.board is not None:
            app.on_startup.append(self._start_publishing)
            app.on_cleanup.append(self._stop_publishing)
        return app

    async def _start_publishing(self, app: web.Application) -> None:
        async def publish_forever():
            from .server_pool import PUBLISH_EVERY_S

            while True:
                self.board.publish(self.local_health())
                await asyncio.sleep(PUBLISH_EVERY_S)

        self._publisher = asyncio.create_task(publish_forever())

    async def _stop_publishing(self, app: web.Application) -> None:
        self._publisher.cancel()

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
        body = self.local_health()
        if self.board is not None:  # a pool: every process's streams, counters summed
            from .server_pool import combine

            self.board.publish(body)
            body = combine(body, self.board.others(), self.board.processes)
        return web.json_response(body)

    def local_health(self) -> dict:
        model = self.model
        return {"status": "ok", "protocol": PROTOCOL_VERSION, "protocols": list(PROTOCOLS),
                "model": {"name": model.name, "backend": type(model).__name__, "sample_rate": model.sample_rate,
                          "latency_ms": model.latency_ms, "mics": [model.min_mics, model.max_mics],
                          "speaker_dim": model.speaker_dim},
                "connections": {"active": len(self.sessions), "max": self.limits.max_connections, "served": self.served,
                                "slow_consumers_dropped": self.slow_consumers_dropped},
                "batching": self.batcher.stats() if self.batcher is not None else None,
                "streams": [s.stats.summary(peer=self.expose_peers) for s in self.sessions.values()]}

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
        session.transport = request.transport
        self.served += 1
        serving = asyncio.create_task(self._serve(ws, request, session))
        watching = asyncio.create_task(self._watch(ws, request, session, serving))
        try:
            await serving
        except (ConnectionError, asyncio.CancelledError):  # a reset, or dropped (or timed out) by the watch
            pass
        finally:
            serving.cancel()
            watching.cancel()
            session.close()
            del self.sessions[stats.id]  # a dropped client frees its state
            if session.idle_out:
                await self._send_error(ws, ProtocolError("idle_timeout", f"nothing received for {self.limits.idle_timeout_s:g} s"))
                await self._close(ws, request, WSCloseCode.GOING_AWAY, b"idle")
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
        """Ask for read receipts while replies are unread; drop a client that leaves one unread too long;
        end a stream that sends nothing for ``idle_timeout_s`` (checked here, not by a timer per message)."""
        limits, ping = self.limits, None
        while not serving.done():
            await asyncio.sleep(min(limits.ping_interval_s, limits.idle_timeout_s) / 2)
            now = time.monotonic()
            if session.busy_since is None and now - session.last_active > limits.idle_timeout_s:
                session.idle_out = True
                serving.cancel()
                return
            # while a message is being answered, the client's pongs wait in the socket unread by us:
            # judge the client by what it had read when we last read (a long message is no one's fault)
            judged_at = now if session.busy_since is None else session.busy_since
            if session.receipts.oldest_unread_age(judged_at) > limits.send_timeout_s:
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
        if serving is not None:
            serving.cancel()
        if request.transport is not None:
            request.transport.abort()

    async def _serve(self, ws: web.WebSocketResponse, request: web.Request, session: Session) -> None:
        while True:
            session.busy_since = None
            msg = await ws.receive()  # the idle limit is kept by _watch: no timer per message
            session.busy_since = session.last_active = time.monotonic()
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
                    if self.batcher is not None:
                        reply = await session.process_batched(samples)
                    else:
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
            speaker, enrolled = await self._speaker(session, message)
            await self._send(ws, session, session.start(message, speaker, enrolled))
        elif kind == "stop":
            tail, reply = await (session.stop_batched() if self.batcher is not None else self._compute(session.stop))
            await self._send(ws, session, tail)
            await self._send(ws, session, reply)
        elif kind == "stats":
            await self._send(ws, session, {"type": "stats", **session.stats.summary()})
        else:
            raise ProtocolError("bad_message", f"unknown message type {quote(kind)}; expected 'start', 'stop' or 'stats'")

    async def _speaker(self, session: Session, message: dict):
        """A personalized model's speaker for this ``start``: the embedding given, or the one of the
        enrollment audio given, computed off the event loop (other streams keep their pace)."""
        if session.engine is not None:
            raise ProtocolError("already_started", "this connection already streams; send 'stop' before a new 'start'")
        request = session.speaker_request(message)
        if not isinstance(request, tuple):
            return request, None
        from .speaker import EnrollmentError, embed

        try:
            embedding, used = await asyncio.get_running_loop().run_in_executor(self.executor, embed, *request)
        except EnrollmentError as err:
            raise ProtocolError("bad_enrollment", str(err)) from None
        return embedding, {"speech_seconds": round(used.speech_seconds, 2), "used_seconds": round(used.used_seconds, 2)}

    async def _compute(self, fn, *args):
        """One slice of model work: in the event loop (then yield to the other streams), or in a worker thread."""
        if self.executor is None:
            result = fn(*args)
            await asyncio.sleep(0)
            return result
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _send(self, ws: web.WebSocketResponse, session: Session, payload: bytes | dict) -> None:
        send = ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_str(json.dumps(payload))
        transport = session.transport
        if transport is not None and not transport.get_write_buffer_size():
            await send  # nothing queued in the kernel's way: the write cannot wait (the common case, no timer)
        else:
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
        if self.batcher is not None:
            self.batcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


def run_one(model_path: str | Path, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
            backend: str = "auto", workers: int = 0, expose_peers: bool = False, board=None, id_start: int = 1,
            id_step: int = 1, max_batch: int = 64, batch_wait_s: float = 0.008) -> None:
    """One server process (``board``: it is one of a pool sharing the port)."""
    server = EnhancementServer(model_path, limits, backend=backend, workers=workers, expose_peers=expose_peers,
                               board=board, id_start=id_start, id_step=id_step, max_batch=max_batch,
                               batch_wait_s=batch_wait_s)
    if board is None or board.index == 0:
        pool = f", {board.processes} processes" if board is not None else ""
        batching = (f"batched, up to {server.batcher.max_batch} streams per call" if server.batcher is not None
                    else "one call per stream")
        print(f"speechnorm serve: {server.model.name} ({type(server.model).__name__}, {batching}) on http://{host}:{port}/ "
              f"(WebSocket /ws, health /health; protocol v{PROTOCOL_VERSION}, serve/PROTOCOL.md{pool})", flush=True)
    web.run_app(server.app(), host=host, port=port, print=None, reuse_port=board is not None, loop=new_event_loop())


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop (libuv: about half the CPU per WebSocket message of asyncio's, measured with
    ``scripts/load_test.py``), or asyncio's where uvloop is not installed (e.g. Windows)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(model_path: str | Path, host: str = "127.0.0.1", port: int = 8765, limits: Limits | None = None,
          backend: str = "auto", workers: int = 0, expose_peers: bool = False, processes: int = 1,
          max_batch: int = 64, batch_wait_s: float = 0.008) -> None:
    """``speechnorm serve``: one process, or ``processes`` sharing the port (``server_pool``)."""
    from .server_pool import serve_pool

    serve_pool(processes, model_path=model_path, host=host, port=port, limits=limits, backend=backend,
               workers=workers, expose_peers=expose_peers, max_batch=max_batch, batch_wait_s=batch_wait_s)
