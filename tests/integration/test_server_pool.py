"""`speechnorm serve --processes 2`: two server processes on one port; every stream is served
exactly, stays in one process, and /health on either process sees the streams of both."""

import asyncio
import json
import socket
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest

from speechnorm.client import encode, stream_audio
from speechnorm.server_pool import HealthBoard, combine
from speechnorm.stream import AtRate, StreamingEnhancer


def body(active: int, streams: list[int]) -> dict:
    return {"status": "ok", "connections": {"active": active, "max": 32, "served": active, "slow_consumers_dropped": 0},
            "streams": [{"id": i} for i in streams]}


def test_health_boards_combine_fresh_bodies_only(tmp_path):
    boards = [HealthBoard(tmp_path, i, 3) for i in range(3)]
    boards[1].publish(body(2, [2, 5]))
    boards[2].publish(body(1, [3]))
    stale = json.loads((tmp_path / "2.json").read_text())
    stale["published"] -= 60
    (tmp_path / "2.json").write_text(json.dumps(stale))  # a process that died a minute ago
    combined = combine(body(1, [1]), boards[0].others(), 3)
    assert combined["connections"]["active"] == 3 and [s["id"] for s in combined["streams"]] == [1, 2, 5]
    assert combined["processes"] == {"configured": 3, "reporting": 2, "active_per_process": [1, 2]}


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT balancing as on Linux")
def test_two_processes_share_the_port_and_the_health_view(tiny_export):
    folder, _ = tiny_export
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "speechnorm", "serve", "--model", str(folder), "--port", str(port),
                               "--processes", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"ws://127.0.0.1:{port}/ws"
    audio = (0.1 * np.random.default_rng(0).standard_normal((2, 16000))).astype(np.float32)

    async def main():
        async with aiohttp.ClientSession() as client:
            deadline = time.time() + 90
            while True:  # both processes up: /health reports two
                try:
                    health = await (await client.get(f"http://127.0.0.1:{port}/health")).json()
                    if health.get("processes", {}).get("reporting") == 2:
                        break
                except aiohttp.ClientError:
                    pass
                assert time.time() < deadline, "the pool did not come up"
                await asyncio.sleep(0.3)
            sockets = []
            for _ in range(12):  # open streams, kept open while /health is read
                ws = await client.ws_connect(url)
                await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000, "channels": 1}))
                await ws.receive()
                await ws.send_bytes(encode(audio[:1, :480], "f32le"))
                await ws.receive()
                sockets.append(ws)
            await asyncio.sleep(1.2)  # two publishing periods
            views = [await (await client.get(f"http://127.0.0.1:{port}/health")).json() for _ in range(4)]
            exact = await stream_audio(url, audio, 16000)
            for ws in sockets:
                await ws.close()
            return views, exact

    try:
        views, exact = asyncio.run(main())
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    for view in views:  # whichever process answered, it counts all 12 streams
        assert view["connections"]["active"] == 12 and len(view["streams"]) == 12, view["processes"]
        assert len({s["id"] for s in view["streams"]}) == 12  # stream ids unique across the processes
    engine = AtRate(StreamingEnhancer.from_path(folder, mics=2), 16000)
    np.testing.assert_array_equal(exact.audio, np.concatenate([engine.process(audio), engine.flush()]))
    assert "Traceback" not in errors, errors
