"""The server under faults: fuzzed message sequences, floods, a client that stops reading,
reconnect storms. It answers every message by the protocol, drops only the offender, and keeps
serving everyone else with results identical to a clean run."""

import asyncio
import json

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechnorm.client import encode, stream_audio
from wsraw import flooding_client
from speechnorm.server import EnhancementServer, Limits
from speechnorm.stream import AtRate, StreamingEnhancer

pytestmark = pytest.mark.reliability
SPEECH = (0.2 * np.sin(2 * np.pi * 200 * np.arange(8000) / 16000)[None] * np.ones((2, 1))).astype(np.float32)


async def serving(folder, body, **limits):
    server = EnhancementServer(folder, Limits(**limits))  # the default mode: the model in the event loop
    async with TestServer(server.app(), host="127.0.0.1") as http:
        return await body(server, str(http.make_url("/ws")).replace("http", "ws", 1))


def expected(folder, audio, rate=16000):
    engine = AtRate(StreamingEnhancer.from_path(folder, mics=audio.shape[0]), rate)
    return np.concatenate([engine.process(audio), engine.flush()])


messages = st.one_of(
    st.builds(lambda d: json.dumps({"type": "start", **d}), st.fixed_dictionaries({}, optional={
        "sample_rate": st.one_of(st.integers(-10, 200_000), st.floats(allow_nan=True), st.text(max_size=3), st.none()),
        "channels": st.one_of(st.integers(-2, 20), st.booleans(), st.text(max_size=2)),
        "format": st.sampled_from(["f32le", "s16le", "u8", "", "F32LE"])})),
    st.just(json.dumps({"type": "stop"})),
    st.just(json.dumps({"type": "stats"})),
    st.text(max_size=40),
    st.builds(json.dumps, st.one_of(st.integers(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))),
    st.binary(max_size=2000),
    st.builds(lambda n, scale: (scale * np.random.default_rng(n).standard_normal(n * 2)).astype("<f4").tobytes(),
              st.integers(0, 800), st.sampled_from([0.1, 1.0, 1e6, float("nan")])),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(messages, min_size=1, max_size=12))
def test_any_message_sequence_is_answered_by_the_protocol(tiny_export, sequence):
    folder, _ = tiny_export

    async def body(server, url):
        async with aiohttp.ClientSession() as client:
            async with client.ws_connect(url) as ws:
                for message in sequence:
                    await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))
                    reply = await ws.receive(timeout=20)
                    assert reply.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), reply
                    if reply.type == aiohttp.WSMsgType.TEXT:
                        assert json.loads(reply.data)["type"] in ("ready", "error", "stats")
                    elif message == json.dumps({"type": "stop"}):
                        assert json.loads((await ws.receive(timeout=20)).data)["type"] == "stopped"
            await asyncio.sleep(0.05)
            assert not server.sessions  # closed: the state is gone
            return await stream_audio(url, SPEECH, 16000)  # and the server still serves exactly

    result = asyncio.run(serving(folder, body))
    np.testing.assert_array_equal(result.audio, expected(folder, SPEECH))


def test_a_client_that_stops_reading_is_dropped_and_others_are_served(tiny_export):
    folder, _ = tiny_export

    async def body(server, url):
        loop = asyncio.get_running_loop()
        sock, send_without_reading = await loop.run_in_executor(None, flooding_client, url)
        sender = loop.run_in_executor(None, send_without_reading)
        honest = await stream_audio(url, SPEECH, 16000)  # served meanwhile, exactly
        for _ in range(200):
            if not server.sessions:
                break
            await asyncio.sleep(0.05)
        dropped = not server.sessions and server.slow_consumers_dropped == 1
        sock.close()
        await sender
        return dropped, honest

    dropped, honest = asyncio.run(serving(folder, body, send_timeout_s=0.5))
    assert dropped
    np.testing.assert_array_equal(honest.audio, expected(folder, SPEECH))


def test_a_reconnect_storm_leaves_no_state_behind(tiny_export):
    folder, _ = tiny_export

    async def body(server, url):
        async with aiohttp.ClientSession() as client:
            async def connect_and_vanish(i):
                ws = await client.ws_connect(url)
                await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000, "channels": 1 + i % 3}))
                await ws.receive()
                await ws.send_bytes(encode(0.1 * np.ones((1 + i % 3, 480), np.float32), "f32le"))
                if i % 2:
                    ws._response.connection.transport.abort()  # half of them drop without a close
                else:
                    await ws.close()

            for _ in range(5):
                await asyncio.gather(*(connect_and_vanish(i) for i in range(20)))
        for _ in range(100):
            if not server.sessions:
                break
            await asyncio.sleep(0.05)
        return len(server.sessions), server.served, await stream_audio(url, SPEECH, 16000)

    left, served, result = asyncio.run(serving(folder, body, max_connections=64))
    assert left == 0 and served == 100
    np.testing.assert_array_equal(result.audio, expected(folder, SPEECH))
