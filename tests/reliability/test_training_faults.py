"""A training run killed with SIGKILL mid-epoch resumes from its last checkpoint and ends with the
same weights as a run that was never interrupted (same seed)."""

import signal
import subprocess
import sys
import time

import pytest
import torch
from integration.test_training import recipe

pytestmark = pytest.mark.reliability


def train_command(conf, *extra):
    return [sys.executable, "-m", "speechnorm", "train", "--config", str(conf), "--test", "false", *extra]


def final_weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_corpus):
    # 8 items in blocks of 2: 4 steps per epoch; checkpoints (validation) at steps 3 and 6, mid-epoch.
    settings = {"data.train_items": 8, "trainer.max_steps": 6, "trainer.val_check_interval": 3,
                "trainer.limit_val_batches": 1}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = subprocess.run(train_command(recipe(tmp_path / "a", tiny_corpus, **settings)), capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]

    conf = recipe(tmp_path / "b", tiny_corpus, **settings)
    last = tmp_path / "b" / "ckpt" / "last.ckpt"
    run = subprocess.Popen(train_command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and run.poll() is None:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert killed_at == 3
    resumed = subprocess.run(train_command(conf, "--ckpt_path", str(last)), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = final_weights(tmp_path / "a" / "ckpt" / "last.ckpt"), final_weights(last)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 6
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5, msg=name)


def test_a_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_corpus):
    conf = recipe(tmp_path, tiny_corpus, **{"trainer.max_steps": 2})
    first = subprocess.run(train_command(conf), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "ckpt" / "last.ckpt"
    good = last.read_bytes()
    # the same run continued with a loss weight that makes the loss non-finite at the next step
    broken = subprocess.run(train_command(conf, "--ckpt_path", str(last), "--trainer.max_steps", "4",
                                          "--model.sisdr_weight", "1e999"), capture_output=True, text=True, timeout=600)
    assert broken.returncode != 0
    assert "train loss is" in broken.stderr and "at step 2; stopping" in broken.stderr, broken.stderr[-2000:]
    assert last.read_bytes() == good  # the last good checkpoint is untouched
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 2 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
