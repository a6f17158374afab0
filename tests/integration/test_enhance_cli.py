"""`speechnorm enhance` as a user runs it: the released model on the bundled real-speech example,
other rates and formats, streaming == offline, and one clear line for every kind of bad input."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as si_sdr

from speechnorm.assets import ASSETS, EXAMPLE
from speechnorm.enhance import DEFAULT_MODEL, DEFAULT_PERSONALIZED_MODEL, default_model, enhance_file


def cli(*args):
    return subprocess.run([sys.executable, "-m", "speechnorm", "enhance", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_enhancing_the_bundled_example_improves_it(tmp_path):
    done = cli(EXAMPLE, "-o", tmp_path / "enhanced.wav")
    assert done.returncode == 0, done.stderr
    enhanced, rate = sf.read(tmp_path / "enhanced.wav", dtype="float32")
    noisy, _ = sf.read(EXAMPLE, dtype="float32")
    clean, _ = sf.read(ASSETS / "example_clean.flac", dtype="float32")
    assert rate == 16000 and enhanced.shape == (noisy.shape[0],)
    assert sf.info(tmp_path / "enhanced.wav").subtype == "PCM_16"  # the input's format
    score = lambda x: si_sdr(torch.from_numpy(x), torch.from_numpy(clean)).item()  # noqa: E731
    assert score(enhanced) > score(noisy[:, 0]) + 2.0, (score(enhanced), score(noisy[:, 0]))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_streaming_equals_offline_at_44k_float(tmp_path, backend):
    noisy, _ = sf.read(EXAMPLE, dtype="float32")
    stereo = tmp_path / "in44.wav"
    import soxr

    sf.write(stereo, soxr.resample(noisy[:32000, :2], 16000, 44100), 44100, subtype="FLOAT")
    streamed = enhance_file(stereo, tmp_path / "streamed.wav", backend=backend)
    enhance_file(stereo, tmp_path / "offline.wav", backend=backend, offline=True)
    a, rate = sf.read(tmp_path / "streamed.wav", dtype="float32")
    b, _ = sf.read(tmp_path / "offline.wav", dtype="float32")
    assert rate == 44100 and a.shape == b.shape == (sf.info(stereo).frames,) and streamed["mics"] == 2
    assert sf.info(tmp_path / "streamed.wav").subtype == "FLOAT"
    # ONNX: the offline graph scans the step graph, so the two agree to rounding. PyTorch: the offline
    # forward keeps one-component statistics in float32 (norm/functional.py), about 2e-4 from a
    # float64 forward on real speech; the step is closer to float64 (measured: 3e-5).
    np.testing.assert_allclose(a, b, atol=1e-4 if backend == "onnx" else 5e-4)
    assert np.abs(a).max() > 0.01  # not silence


def write_bad_inputs(folder):
    folder.mkdir()
    (folder / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 8)
    sf.write(folder / "empty.wav", np.zeros((0, 2), np.float32), 16000)
    sf.write(folder / "many.wav", np.zeros((1600, 17), np.float32), 16000)
    nan = np.zeros((3200, 2), np.float32)
    nan[2000] = np.nan
    sf.write(folder / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(folder / "slow.wav", np.zeros((400, 1), np.float32), 4000)
    return {"missing.wav": "no such file", "corrupt.wav": "cannot read audio", "empty.wav": "empty",
            "many.wav": "17 channels", "nan.wav": "NaN", "slow.wav": "sample rate"}


def test_bad_input_gives_one_line_and_exit_2_and_leaves_no_file(tmp_path):
    for name, says in write_bad_inputs(tmp_path / "bad").items():
        out = tmp_path / f"out_{name}"
        done = cli(tmp_path / "bad" / name, "-o", out)
        assert done.returncode == 2, (name, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and name in lines[0], (name, done.stderr)
        assert not out.exists() and not list(tmp_path.glob(".out_*"))
    done = cli(EXAMPLE, "-o", tmp_path / "out.mp4")
    assert done.returncode == 2 and "unknown output format" in done.stderr
    done = cli(EXAMPLE, "-o", tmp_path / "x.wav", "--model", tmp_path / "nowhere")
    assert done.returncode == 2 and "no model" in done.stderr


@pytest.mark.skipif(__import__("importlib").util.find_spec("resemblyzer") is None,
                    reason="the speaker encoder's weights are not installed (make venv installs them)")
def test_enroll_drives_a_personalized_model(tmp_path, monkeypatch):
    """--enroll takes enrollment audio or its .npy; the output is the model's for that embedding;
    with no model named it is the personalized default's; a personalized model without an
    enrollment, or a plain model with one, is a one-line error."""
    from conftest import save_checkpoint

    from speechnorm.models.checkpoint import load_model
    from speechnorm.speaker import embed

    checkpoint = save_checkpoint(tmp_path / "p.ckpt", hidden=16, layers=1, speaker_dim=256)
    stored = torch.load(checkpoint, weights_only=False)
    stored["state_dict"]["model.speaker.proj.weight"].normal_(0, 0.2)  # the embedding matters
    torch.save(stored, checkpoint)
    wav, rate = sf.read(ASSETS / "real_speech" / "conversation.flac", dtype="float32")
    sf.write(tmp_path / "me.wav", wav[int(10.6 * rate): int(14.45 * rate)], rate)  # speaker A alone
    noisy, _ = sf.read(EXAMPLE, dtype="float32")
    sf.write(tmp_path / "in.wav", noisy[:16000, :2], 16000, subtype="FLOAT")

    assert subprocess.run([sys.executable, "-m", "speechnorm", "enroll", tmp_path / "me.wav", "-o", tmp_path / "me.npy"],
                          capture_output=True, timeout=300).returncode == 0
    by_audio = enhance_file(tmp_path / "in.wav", tmp_path / "a.wav", model=checkpoint, enroll=tmp_path / "me.wav")
    enhance_file(tmp_path / "in.wav", tmp_path / "b.wav", model=checkpoint, enroll=tmp_path / "me.npy", offline=True)
    assert by_audio["personalized"]
    model, _ = load_model(checkpoint)
    speaker = torch.from_numpy(embed(wav[int(10.6 * rate): int(14.45 * rate)], rate)[0])
    with torch.no_grad():
        expected = model(torch.from_numpy(np.pad(noisy[:16000, :2].T, ((0, 0), (0, 160))))[None], speaker=speaker)[0]
    for name in ("a.wav", "b.wav"):
        got, _ = sf.read(tmp_path / name, dtype="float32")
        np.testing.assert_allclose(got, expected[160:16160].numpy(), atol=1e-4)  # streamed and offline, delay removed

    missing = cli(tmp_path / "in.wav", "-o", tmp_path / "c.wav", "--model", checkpoint)
    assert missing.returncode != 0 and "is personalized" in missing.stderr and "--enroll" in missing.stderr
    plain = cli(tmp_path / "in.wav", "-o", tmp_path / "d.wav", "--model", DEFAULT_MODEL, "--enroll", tmp_path / "me.npy")
    assert plain.returncode != 0 and "not personalized" in plain.stderr
    assert default_model(personalized=True) == DEFAULT_PERSONALIZED_MODEL  # with --enroll and no --model
    monkeypatch.setenv("SPEECHNORM_PERSONALIZED_MODEL", str(checkpoint))
    unnamed = enhance_file(tmp_path / "in.wav", tmp_path / "f.wav", enroll=tmp_path / "me.npy")
    assert unnamed["model"] == str(checkpoint) and unnamed["personalized"]
    np.testing.assert_array_equal(sf.read(tmp_path / "f.wav")[0], sf.read(tmp_path / "a.wav")[0])
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(48000, np.float32), 16000)
    refused = cli(tmp_path / "in.wav", "-o", tmp_path / "e.wav", "--model", checkpoint, "--enroll", silent)
    assert refused.returncode != 0 and "silent" in refused.stderr
    assert not (tmp_path / "c.wav").exists() and not (tmp_path / "e.wav").exists()
