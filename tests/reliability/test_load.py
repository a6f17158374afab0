"""Concurrent real-time streams on loopback: no underruns, bounded latency (small in CI; the
sustained stream count of this machine is measured by scripts/load_test.py)."""

import asyncio

import numpy as np
import pytest
import soundfile as sf
from aiohttp.test_utils import TestServer

from speechnorm.assets import EXAMPLE
from speechnorm.client import stream_audio
from speechnorm.enhance import default_model
from speechnorm.server import EnhancementServer

pytestmark = pytest.mark.reliability


def run_streams(streams: int, seconds: float):
    audio, rate = sf.read(EXAMPLE, dtype="float32", always_2d=True)
    repeats = int(np.ceil(seconds * rate / audio.shape[0]))
    audio = np.ascontiguousarray(np.tile(audio.T, (1, repeats))[:, : int(seconds * rate)])

    async def main():
        server = EnhancementServer(default_model(), workers=2)
        async with TestServer(server.app(), host="127.0.0.1") as http:
            url = str(http.make_url("/ws")).replace("http", "ws", 1)
            return await asyncio.gather(*(stream_audio(url, audio, rate, realtime=True, playback_buffer_ms=60)
                                          for _ in range(streams)))

    return asyncio.run(main()), audio.shape[1]


def test_two_real_time_streams_have_no_underruns():
    results, samples = run_streams(2, 3.0)
    for result in results:
        assert result.audio.size == samples
        assert result.underruns == 0, result.latencies_ms
        assert np.percentile(result.latencies_ms, 99) < 60


@pytest.mark.slow
def test_six_real_time_streams_for_thirty_seconds():
    results, samples = run_streams(6, 30.0)
    assert sum(r.underruns for r in results) == 0
