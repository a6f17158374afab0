"""A WebSocket client for ``speechnorm serve`` (protocol v2, ``serve/PROTOCOL.md``; it speaks v1
unless a personalized model's speaker is given).

``stream_file`` sends a WAV/FLAC file in 10 ms messages, at real-time pace or as fast as the
server answers, and returns the enhanced audio; ``scripts/stream_client.py`` is its command line.
The result equals ``speechnorm enhance`` on the same file (same engine, same resampling).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

FORMATS = {"f32le": np.dtype("<f4"), "s16le": np.dtype("<i2")}


class ServerError(RuntimeError):
    def __init__(self, reply: dict):
        super().__init__(f"server error {reply.get('code')}: {reply.get('message')}")
        self.code = reply.get("code")


@dataclass
class StreamResult:
    audio: np.ndarray  # (samples,) float32, enhanced, at the input's rate
    latencies_ms: list[float] = field(default_factory=list)  # send -> reply, per message
    underruns: int = 0  # real-time pace only: replies that came after their playback deadline
    ready: dict = field(default_factory=dict)  # the server's `ready` (a personalized stream's speaker in it)


def encode(audio: np.ndarray, fmt: str) -> bytes:
    """(channels, n) float -> interleaved PCM bytes."""
    frames = audio.T
    if fmt == "s16le":
        return np.clip(np.round(frames * 32768.0), -32768, 32767).astype("<i2").tobytes()
    return frames.astype("<f4").tobytes()


def speaker_field(speaker=None, enroll: tuple[np.ndarray, int] | None = None) -> dict | None:
    """The ``start`` message's ``speaker`` (protocol 2): an embedding (``speechnorm enroll``), or
    enrollment audio (mono float samples, rate) that the server embeds."""
    if speaker is not None and enroll is not None:
        raise ValueError("give the speaker's embedding or enrollment audio, not both")
    if speaker is not None:
        return {"embedding": [float(v) for v in np.asarray(speaker, np.float32).reshape(-1)]}
    if enroll is not None:
        audio, rate = enroll
        pcm = np.asarray(audio, np.float32).reshape(-1).astype("<f4").tobytes()
        return {"audio": base64.b64encode(pcm).decode("ascii"), "sample_rate": int(rate), "format": "f32le"}
    return None


def decode(payload: bytes, fmt: str) -> np.ndarray:
    samples = np.frombuffer(payload, dtype=FORMATS[fmt])
    return samples.astype(np.float32) / 32768.0 if fmt == "s16le" else samples.astype(np.float32)


async def stream_audio(url: str, audio: np.ndarray, rate: int, fmt: str = "f32le", realtime: bool = False,
                       message_ms: float = 10.0, playback_buffer_ms: float = 40.0, speaker=None,
                       enroll: tuple[np.ndarray, int] | None = None) -> StreamResult:
    """Stream (channels, n) float audio; returns the enhanced mono audio (n samples). A personalized
    model needs ``speaker`` (its embedding) or ``enroll`` ((samples, rate) of the speaker alone)."""
    import aiohttp

    step = max(1, int(rate * message_ms / 1000))
    chunks = [audio[:, i : i + step] for i in range(0, audio.shape[1], step)]
    result = StreamResult(np.zeros(0, np.float32))
    async with aiohttp.ClientSession() as client, client.ws_connect(url, max_msg_size=0) as ws:
        start = {"type": "start", "sample_rate": rate, "channels": audio.shape[0], "format": fmt}
        who = speaker_field(speaker, enroll)
        if who is not None:
            start.update(protocol=2, speaker=who)
        await ws.send_str(json.dumps(start))
        ready = await _json(ws)
        if ready.get("type") != "ready":
            raise ServerError(ready)
        result.ready = ready
        sent_at: list[float] = []
        t0 = time.perf_counter()

        async def sender():
            for index, chunk in enumerate(chunks):
                if realtime:  # a live source: message i exists only at (i + 1) · message duration
                    await asyncio.sleep(max(0.0, t0 + (index + 1) * message_ms / 1000 - time.perf_counter()))
                sent_at.append(time.perf_counter())
                await ws.send_bytes(encode(chunk, fmt))
            await ws.send_str(json.dumps({"type": "stop"}))

        send_task = asyncio.create_task(sender())
        parts = []
        try:
            for index in range(len(chunks) + 1):  # one reply per message, then the flushed tail
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise ServerError(json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else {"code": str(msg.type)})
                parts.append(decode(msg.data, fmt))
                if index < len(chunks):
                    now = time.perf_counter()
                    result.latencies_ms.append(1000 * (now - sent_at[index]))
                    deadline = t0 + (index + 1) * message_ms / 1000 + playback_buffer_ms / 1000
                    result.underruns += realtime and now > deadline
            stopped = await _json(ws)
            if stopped.get("type") != "stopped":
                raise ServerError(stopped)
        finally:
            send_task.cancel()
        result.audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return result


async def _json(ws) -> dict:
    msg = await ws.receive()
    try:
        return json.loads(msg.data)
    except (TypeError, json.JSONDecodeError):
        return {"type": "error", "code": "unexpected", "message": f"expected JSON, got {msg.type}"}


def stream_file(url: str, src: str, dst: str | None = None, fmt: str = "f32le", realtime: bool = False) -> StreamResult:
    audio, rate = sf.read(src, dtype="float32", always_2d=True)
    result = asyncio.run(stream_audio(url, np.ascontiguousarray(audio.T), rate, fmt=fmt, realtime=realtime))
    if dst is not None:
        sf.write(dst, result.audio, rate, subtype="FLOAT" if fmt == "f32le" else "PCM_16")
    return result
