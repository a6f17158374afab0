"""The one-call GPU training script, run on the CPU with a tiny budget (its dry run): the pack is
decoded, a bank built, steps trained, validation scored, and the files a GPU run leaves are there
and usable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from speechnorm.data import pack

ROOT = Path(__file__).resolve().parents[2]


def test_device_train_dry_run(pack_corpus, tmp_path):
    pack.write(tmp_path / "pack", pack_corpus / "speech", pack_corpus / "noise")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PACK": str(tmp_path / "pack"), "BUDGET": "30", "BATCH": "2",
           "ITEM_SECONDS": "1", "BANK_ROOMS": "4", "INIT_FROM": "", "DEVICE": "cpu", "VAL_BATCHES": "1",
           "VAL_EVERY": "2", "PY": sys.executable, "OMP_NUM_THREADS": "1", "BANK_DIR": str(tmp_path / "bank")}
    done = subprocess.run(["bash", "scripts/device_train.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] >= 1 and summary["bank_rooms"] == 4 and summary["val_clips"] == 8
    assert 0 < summary["data_share_of_step"] < 1
    assert summary["pack"]["speech"]["entries"] == 3
    rows = (out / "curve.csv").read_text().splitlines()
    assert rows[0] == "step,seconds,train_loss,train_si_sdr,val_si_sdr" and len(rows) >= 3  # before, after
    assert (out / "curve.png").stat().st_size > 1000 and "done:" in (out / "log.txt").read_text()
    from speechnorm.models.checkpoint import load_model

    model, info = load_model(out / "model.ckpt")  # what export, evaluate and init_from read
    assert info["model"] == "tac_gru" and sum(p.numel() for p in model.parameters()) > 0


def test_device_train_refuses_a_missing_pack(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PACK": str(tmp_path / "nothing"), "INIT_FROM": "",
           "DEVICE": "cpu", "PY": sys.executable}
    done = subprocess.run(["bash", "scripts/device_train.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "holds no corpus pack" in done.stdout
