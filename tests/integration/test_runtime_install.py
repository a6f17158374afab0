"""The runtime install (`pip install speechnorm`, no extras) runs `enhance` and `serve` on an
exported model without torch: a fresh venv holds only the runtime dependencies, so any import of
torch (or of the rest of the training stack) would fail these commands."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "tac_gru_online_small_v2"
BATCHED_MODEL = ROOT / "models" / "tac_gru_online_small_v2"  # exported with the batched step graph
EXAMPLE = ROOT / "speechnorm" / "assets" / "example_4mic.flac"
CLIENT = """
import asyncio, json, sys
import numpy as np, soundfile as sf
from speechnorm.client import stream_audio
audio, rate = sf.read(sys.argv[2], dtype="float32", always_2d=True)
result = asyncio.run(stream_audio(sys.argv[1], np.ascontiguousarray(audio.T[:, : rate * 2]), rate))
heavy = [m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "torchaudio", "onnx")]
print(json.dumps({"samples": int(result.audio.size), "training_modules": heavy}))
"""


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(ROOT / "requirements" / "constraints.txt"),
                          str(ROOT)], capture_output=True, text=True, timeout=900)
    if pip.returncode and any(s in pip.stderr for s in ("Could not find a version", "connection", "Network")):
        pytest.skip(f"the package registry is unreachable: {pip.stderr.strip()[-300:]}")
    assert pip.returncode == 0, pip.stderr[-2000:]
    installed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"], capture_output=True, text=True).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert not names & {"torch", "lightning", "torchaudio", "onnx"}, names  # the runtime really is torch-free
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    assert size < 300e6, f"the runtime install takes {size / 1e6:.0f} MB"
    return venv


def test_enhance_runs_without_torch_and_matches_the_full_install(runtime_venv, tmp_path):
    out = tmp_path / "enhanced.wav"
    done = subprocess.run([str(runtime_venv / "bin" / "speechnorm"), "enhance", str(EXAMPLE), "-o", str(out),
                           "--model", str(MODEL)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    from speechnorm.enhance import enhance_file

    enhance_file(EXAMPLE, tmp_path / "full.wav", model=MODEL, backend="onnx")
    np.testing.assert_array_equal(sf.read(out)[0], sf.read(tmp_path / "full.wav")[0])
    # a command of the training install says what to install, and enhances nothing first
    scored = subprocess.run([str(runtime_venv / "bin" / "speechnorm"), "enhance", str(EXAMPLE), "-o", str(tmp_path / "x.wav"),
                             "--model", str(MODEL), "--reference", str(EXAMPLE)], capture_output=True, text=True, timeout=300)
    assert scored.returncode == 2 and "pip install 'speechnorm[train]'" in scored.stderr
    assert not (tmp_path / "x.wav").exists()


def test_serve_runs_without_torch(runtime_venv, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(runtime_venv / "bin" / "speechnorm"), "serve", "--model", str(BATCHED_MODEL), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": ""})
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        client = subprocess.run([str(runtime_venv / "bin" / "python"), "-c", CLIENT, f"ws://127.0.0.1:{port}/ws", str(EXAMPLE)],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert client.returncode == 0, client.stderr
        result = json.loads(client.stdout)
        assert result == {"samples": 32000, "training_modules": []}
    finally:
        server.terminate()
        output, errors = server.communicate(timeout=20)
    assert "Traceback" not in errors, errors
    assert "batched, up to 64 streams per call" in output  # streams batched, from the runtime install


def test_a_triton_repository_is_written_without_torch(runtime_venv, tmp_path):
    done = subprocess.run([str(runtime_venv / "bin" / "speechnorm"), "export", str(BATCHED_MODEL), "-o", str(tmp_path / "repo"),
                           "--target", "triton", "--mics", "2"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "repo" / BATCHED_MODEL.name
    assert (folder / "config.pbtxt").is_file() and (folder / "1" / "model.onnx").read_bytes() == \
        (BATCHED_MODEL / "model_batch.onnx").read_bytes()
