"""The WebSocket server as clients use it: exact results, isolated streams, every protocol error
answered by code, limits enforced, state freed when a client goes."""

import asyncio
import json
import sys

import aiohttp
import numpy as np
import pytest
import soundfile as sf
from aiohttp.test_utils import TestServer

from speechnorm.assets import EXAMPLE
from speechnorm.client import ServerError, encode, stream_audio
from speechnorm.server import EnhancementServer, Limits
from speechnorm.stream import AtRate, StreamingEnhancer


MODE = {}
MODE_OPTIONS = {"batched": {}, "event-loop": {"max_batch": 1}, "workers": {"workers": 2}}


@pytest.fixture(autouse=True, params=list(MODE_OPTIONS))
def server_mode(request, monkeypatch):
    """Every test here runs against the three modes: streams batched into shared model calls (the
    default), one call per stream and hop in the event loop, and in 2 worker threads."""
    monkeypatch.setattr(sys.modules[__name__], "MODE", MODE_OPTIONS[request.param])


def run_with_server(folder, body, **limits):
    """Run ``body(server, url)`` against a fresh server on an ephemeral port."""

    async def main():
        server = EnhancementServer(folder, Limits(**limits), **MODE)
        async with TestServer(server.app(), host="127.0.0.1") as http:
            return await body(server, str(http.make_url("/ws")).replace("http", "ws", 1), http)

    return asyncio.run(main())


def expected_output(folder, audio, rate):
    engine = AtRate(StreamingEnhancer.from_path(folder, mics=audio.shape[0]), rate)
    return np.concatenate([engine.process(audio), engine.flush()])


@pytest.fixture(scope="module")
def speech():
    audio, rate = sf.read(EXAMPLE, dtype="float32", always_2d=True, frames=16000 * 2)
    return np.ascontiguousarray(audio.T[:2]), rate


def test_streamed_result_equals_the_engine_and_health_reports_latency(tiny_export, speech):
    folder, _ = tiny_export
    audio, rate = speech

    async def body(server, url, http):
        result = await stream_audio(url, audio, rate)
        async with aiohttp.ClientSession() as client:
            health = await (await client.get(http.make_url("/health"))).json()
        return result, health, len(server.sessions)

    result, health, left = run_with_server(folder, body)
    np.testing.assert_array_equal(result.audio, expected_output(folder, audio, rate))
    assert health["status"] == "ok" and health["connections"]["served"] == 1 and left == 0


def test_int16_at_48k(tiny_export, speech):
    folder, _ = tiny_export
    import soxr

    audio = np.ascontiguousarray(soxr.resample(speech[0].T, 16000, 48000).T[:1])
    quantized = np.round(audio * 32768) / 32768  # what s16le carries
    result = run_with_server(folder, lambda s, url, h: stream_audio(url, audio, 48000, fmt="s16le"))
    expected = np.clip(np.round(expected_output(folder, quantized.astype(np.float32), 48000) * 32768), -32768, 32767) / 32768
    np.testing.assert_allclose(result.audio, expected, atol=1.5 / 32768)


def test_concurrent_streams_get_exactly_what_each_gets_alone(tiny_export, speech):
    folder, _ = tiny_export
    audio, rate = speech
    other = (0.2 * np.random.default_rng(0).standard_normal((3, 8000))).astype(np.float32)

    async def body(server, url, http):
        return await asyncio.gather(stream_audio(url, audio, rate), stream_audio(url, other, 16000),
                                    stream_audio(url, audio[:1], rate))

    a, b, c = run_with_server(folder, body)
    np.testing.assert_array_equal(a.audio, expected_output(folder, audio, rate))
    np.testing.assert_array_equal(b.audio, expected_output(folder, other, 16000))
    np.testing.assert_array_equal(c.audio, expected_output(folder, audio[:1], rate))


async def send_and_read(ws, payload):
    await (ws.send_bytes(payload) if isinstance(payload, bytes) else ws.send_str(payload))
    msg = await ws.receive(timeout=10)
    return json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else msg


def test_protocol_errors_are_answered_by_code_and_leave_the_stream_intact(tiny_export, speech):
    folder, _ = tiny_export
    audio, rate = speech
    audio = audio[:, :4800]

    async def body(server, url, http):
        codes = []
        async with aiohttp.ClientSession() as client, client.ws_connect(url) as ws:
            codes.append((await send_and_read(ws, b"\x00" * 8))["code"])  # audio before start
            codes.append((await send_and_read(ws, "{not json"))["code"])
            codes.append((await send_and_read(ws, json.dumps({"type": "dance"})))["code"])
            codes.append((await send_and_read(ws, json.dumps([1, 2])))["code"])
            for bad in ({"channels": 0}, {"channels": 99}, {"channels": 2, "sample_rate": 100},
                        {"channels": 2, "sample_rate": 16000, "format": "mp3"}, {"channels": "2", "sample_rate": 16000}):
                codes.append((await send_and_read(ws, json.dumps({"type": "start", "sample_rate": rate, **bad})))["code"])
            ready = await send_and_read(ws, json.dumps({"type": "start", "sample_rate": rate, "channels": 2}))
            assert ready["type"] == "ready" and ready["latency_ms"] == 20.0
            codes.append((await send_and_read(ws, json.dumps({"type": "start", "sample_rate": rate, "channels": 2})))["code"])
            out = []
            for start in range(0, audio.shape[1], 480):
                chunk = audio[:, start : start + 480]
                codes.append((await send_and_read(ws, encode(chunk, "f32le")[:-3]))["code"])  # a partial frame
                nan = chunk.copy()
                nan[1, 7] = np.nan
                codes.append((await send_and_read(ws, encode(nan, "f32le")))["code"])
                out.append(np.frombuffer((await send_and_read(ws, encode(chunk, "f32le"))).data, "<f4"))
            await ws.send_str(json.dumps({"type": "stop"}))
            out.append(np.frombuffer((await ws.receive()).data, "<f4"))
            stopped = json.loads((await ws.receive()).data)
        return codes, np.concatenate(out), stopped

    codes, out, stopped = run_with_server(folder, body)
    assert codes[:10] == ["not_started", "bad_json", "bad_message", "bad_message"] + ["bad_start"] * 5 + ["already_started"]
    assert set(codes[10:]) == {"bad_frame", "bad_audio"}
    np.testing.assert_array_equal(out, expected_output(folder, audio, rate))  # the refused messages changed nothing
    assert stopped == {"type": "stopped", "samples_in": audio.shape[1], "samples_out": audio.shape[1]}


def test_limits_oversize_full_and_idle(tiny_export):
    folder, _ = tiny_export

    async def body(server, url, http):
        async with aiohttp.ClientSession() as client:
            async with client.ws_connect(url) as ws:
                await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000, "channels": 1}))
                await ws.receive()
                await ws.send_bytes(b"\x00" * 8192)  # over max_message_bytes
                closed = await ws.receive(timeout=10)
                oversize = (closed.type, ws.close_code)
            held = [await client.ws_connect(url) for _ in range(2)]
            async with client.ws_connect(url) as third:
                full = json.loads((await third.receive(timeout=10)).data)
                await third.receive(timeout=10)
                full_close = third.close_code
            idle = json.loads((await held[0].receive(timeout=10)).data)  # nothing sent: idle timeout
            for ws in held:
                await ws.close()
            await asyncio.sleep(0.1)
        return oversize, full, full_close, idle, len(server.sessions)

    oversize, full, full_close, idle, left = run_with_server(folder, body, max_message_bytes=4096, max_connections=2,
                                                             idle_timeout_s=1.0)
    assert oversize[1] == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    assert full["code"] == "server_full" and full_close == 1013
    assert idle["code"] == "idle_timeout"
    assert left == 0


def test_a_client_that_vanishes_mid_stream_frees_its_state(tiny_export, speech):
    folder, _ = tiny_export
    audio, rate = speech

    async def body(server, url, http):
        async with aiohttp.ClientSession() as client:
            ws = await client.ws_connect(url)
            await ws.send_str(json.dumps({"type": "start", "sample_rate": rate, "channels": 2}))
            await ws.receive()
            await ws.send_bytes(encode(audio[:, :1600], "f32le"))
            await ws.receive()
            during = len(server.sessions)
            ws._response.connection.transport.abort()  # no close handshake: the TCP connection just drops
        for _ in range(50):
            if not server.sessions:
                break
            await asyncio.sleep(0.05)
        after = len(server.sessions)
        again = await stream_audio(url, audio[:, :3200], rate)  # the server still serves
        return during, after, again

    during, after, again = run_with_server(folder, body)
    assert during == 1 and after == 0
    np.testing.assert_array_equal(again.audio, expected_output(folder, audio[:, :3200], rate))


def test_client_raises_the_servers_error(tiny_export):
    folder, _ = tiny_export
    with pytest.raises(ServerError, match="bad_start"):
        run_with_server(folder, lambda s, url, h: stream_audio(url, np.zeros((9, 160), np.float32), 16000))


@pytest.fixture(scope="module")
def personalized_export(tmp_path_factory):
    """A small personalized TAC-GRU (speaker embeddings of 256, FiLM weights drawn so they matter), exported."""
    import torch

    from speechnorm.export.exporter import export_module
    from speechnorm.models import build

    torch.manual_seed(2)
    model = build("tac_gru", norm="online", size="small", hidden=24, layers=1, speaker_dim=256).eval()
    with torch.no_grad():
        model.speaker.proj.weight.normal_(0, 0.3)
    folder = tmp_path_factory.mktemp("personalized")
    export_module(model, folder, max_mics=4)
    return folder


@pytest.mark.skipif(__import__("importlib").util.find_spec("resemblyzer") is None,
                    reason="the speaker encoder's weights are not installed (make venv installs them)")
def test_two_users_with_different_enrollments_each_get_their_own_result(personalized_export, speech):
    """One user enrolls by embedding, the other by audio, at once: each gets exactly what the engine
    gives for their own embedding; a missing or unusable enrollment is answered by code (protocol 2),
    and a protocol-1 start is answered as before."""
    from speechnorm.assets import ASSETS
    from speechnorm.speaker import embed

    folder = personalized_export
    audio, rate = speech
    conversation, conv_rate = sf.read(ASSETS / "real_speech" / "conversation.flac", dtype="float32")
    voice_a = conversation[int(10.6 * conv_rate): int(14.45 * conv_rate)]
    voice_b = conversation[int(21.8 * conv_rate): int(27.8 * conv_rate)]
    embedding_a = embed(voice_a, conv_rate)[0]
    embedding_b = embed(voice_b, conv_rate)[0]

    def alone(embedding):
        engine = AtRate(StreamingEnhancer.from_path(folder, mics=2, speaker=embedding), rate)
        return np.concatenate([engine.process(audio), engine.flush()])

    async def body(server, url, http):
        a, b = await asyncio.gather(stream_audio(url, audio, rate, speaker=embedding_a),
                                    stream_audio(url, audio, rate, enroll=(voice_b, conv_rate)))
        codes = []
        async with aiohttp.ClientSession() as client, client.ws_connect(url) as ws:
            start = {"type": "start", "sample_rate": rate, "channels": 2}
            codes.append((await send_and_read(ws, json.dumps(start)))["code"])  # no speaker
            for speaker in ({"embedding": [0.1] * 3}, {"embedding": [0.1] * 255 + [float("nan")]}, {"audio": "!!"},
                            {"audio": "AAAA", "sample_rate": 8000}, {"embedding": [], "audio": ""}, "me"):
                codes.append((await send_and_read(ws, json.dumps({**start, "protocol": 2, "speaker": speaker})))["code"])
            silent = {"audio": __import__("base64").b64encode(np.zeros(32000, "<f4").tobytes()).decode(), "sample_rate": 16000}
            codes.append((await send_and_read(ws, json.dumps({**start, "protocol": 2, "speaker": silent})))["code"])
            codes.append((await send_and_read(ws, json.dumps({**start, "protocol": 3})))["code"])
        return a, b, codes

    a, b, codes = run_with_server(folder, body)
    # the two 2-mic streams may share batched calls: equal to float rounding (one call's batch of 2 vs 1)
    np.testing.assert_allclose(a.audio, alone(embedding_a), atol=1e-6)
    np.testing.assert_allclose(b.audio, alone(embedding_b), atol=1e-6)  # embedded by the server from the audio
    assert np.abs(a.audio - b.audio).max() > 1e-3  # the two users' streams differ: each kept their own speaker
    assert a.ready["protocol"] == 2 and b.ready["speaker"]["speech_seconds"] > 2.0
    np.testing.assert_allclose(b.ready["speaker"]["embedding"], embedding_b, atol=1e-6)
    assert codes == ["bad_start"] * 7 + ["bad_enrollment", "bad_start"]


def test_a_plain_model_refuses_a_speaker_and_speaks_protocol_1(tiny_export, speech):
    folder, _ = tiny_export
    audio, rate = speech

    async def body(server, url, http):
        async with aiohttp.ClientSession() as client, client.ws_connect(url) as ws:
            start = {"type": "start", "sample_rate": rate, "channels": 2}
            refused = await send_and_read(ws, json.dumps({**start, "protocol": 2, "speaker": {"embedding": [0.0] * 256}}))
            ready = await send_and_read(ws, json.dumps(start))
        return refused, ready

    refused, ready = run_with_server(folder, body)
    assert refused["code"] == "bad_start" and "not personalized" in refused["message"]
    assert ready["type"] == "ready" and ready["protocol"] == 1 and "speaker" not in ready
