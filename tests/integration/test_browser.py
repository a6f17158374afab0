"""The demo page end to end in headless Chromium: a WAV file as the microphone, the page streams
it to the server over WebSocket and enhanced audio comes back (read from the page itself)."""

import asyncio
import json
import shutil
import subprocess
import tempfile

import aiohttp
import numpy as np
import pytest
import soundfile as sf
from aiohttp.test_utils import TestServer, unused_port

from speechnorm.assets import EXAMPLE
from speechnorm.enhance import default_model
from speechnorm.server import EnhancementServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make system-deps)")


async def evaluate(ws, expression, ident):
    await ws.send_json({"id": ident, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": True}})
    while True:
        reply = await ws.receive_json(timeout=10)
        if reply.get("id") == ident:
            return reply["result"]["result"].get("value")


async def page_stats(page_url, fake_mic, seconds=20.0):
    port = unused_port()
    profile = tempfile.mkdtemp()
    browser = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         f"--use-file-for-fake-audio-capture={fake_mic}", "--autoplay-policy=no-user-gesture-required",
         f"--remote-debugging-port={port}", page_url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as client:
            target = None
            for _ in range(150):
                try:
                    pages = await (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
                    target = next((p for p in pages if p["type"] == "page"), None)
                except aiohttp.ClientError:
                    pass
                if target:
                    break
                await asyncio.sleep(0.2)
            assert target, "chromium did not open the page"
            async with client.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                stats, ident = {}, 0
                for ident in range(int(seconds / 0.25)):
                    stats = json.loads(await evaluate(ws, "JSON.stringify(window.speechnormStats || {})", ident) or "{}")
                    if stats.get("receivedSamples", 0) > 48000 * 2 or stats.get("errors"):
                        break
                    await asyncio.sleep(0.25)
                return stats
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_streams_a_microphone_and_plays_enhanced_audio(tmp_path):
    noisy, rate = sf.read(EXAMPLE, dtype="float32")
    fake_mic = tmp_path / "mic.wav"
    sf.write(fake_mic, noisy[:, 0], rate, subtype="PCM_16")

    async def main():
        server = EnhancementServer(default_model(), workers=2)
        async with TestServer(server.app(), host="127.0.0.1") as http:
            stats = await page_stats(str(http.make_url("/?autostart=1")), fake_mic)
            return stats, server.served

    stats, served = asyncio.run(main())
    assert not stats.get("errors"), stats
    assert stats["state"].startswith("streaming at"), stats
    assert stats["receivedSamples"] > 48000 and served == 1, stats  # over a second of enhanced audio came back
    rms = np.sqrt(stats["receivedSumSquares"] / stats["receivedSamples"])
    assert rms > 1e-3, stats  # and it is not silence


@pytest.mark.skipif(__import__("importlib").util.find_spec("resemblyzer") is None,
                    reason="the speaker encoder's weights are not installed (make venv installs them)")
def test_the_page_enrolls_the_user_for_a_personalized_model(tmp_path):
    """A personalized model: the page records 5 s of the microphone first, the server embeds it, and
    the stream that follows is enhanced for that speaker."""
    import torch

    from speechnorm.assets import ASSETS
    from speechnorm.export.exporter import export_module
    from speechnorm.models import build

    torch.manual_seed(0)
    model = build("tac_gru", norm="online", size="small", hidden=24, layers=1, speaker_dim=256).eval()
    export_module(model, tmp_path / "model", max_mics=2)
    speech, rate = sf.read(ASSETS / "real_speech" / "conversation.flac", dtype="float32")
    fake_mic = tmp_path / "mic.wav"
    sf.write(fake_mic, speech[int(10.6 * rate): int(20 * rate)], rate, subtype="PCM_16")

    async def main():
        server = EnhancementServer(tmp_path / "model", workers=2)
        async with TestServer(server.app(), host="127.0.0.1") as http:
            stats = await page_stats(str(http.make_url("/?autostart=1")), fake_mic, seconds=30.0)
            return stats, server.served

    stats, served = asyncio.run(main())
    assert not stats.get("errors"), stats
    assert stats["enrolledSeconds"] >= 5.0 and stats["state"].startswith("streaming at"), stats
    assert stats["receivedSamples"] > 48000 and served == 1, stats
