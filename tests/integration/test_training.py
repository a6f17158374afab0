"""Training as a user runs it: `speechnorm train` on a tiny recipe, resume, batch size 1, DDP."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from speechnorm.task import EnhancementTask, MultiResolutionSTFTLoss


def recipe(tmp_path, corpus, **overrides):
    """A tiny recipe: two short steps on the test corpus, everything written under tmp_path."""
    conf = {
        "seed_everything": 0,
        "model": {"model": "tac_gru", "norm": "online", "model_config": {"hidden": 16, "layers": 1}, "quality_every_val": False},
        "data": {"clean_dir": str(corpus / "clean"), "noise_dir": str(corpus / "noise"), "train_items": 4, "val_items": 2,
                 "test_items": 2, "seconds": 0.5, "batch_size": 2, "num_workers": 0, "seed": 0},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "val_check_interval": 2,
                    "check_val_every_n_epoch": None, "log_every_n_steps": 1, "use_distributed_sampler": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]},
    }
    for dotted, value in overrides.items():
        node = conf
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def train(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "speechnorm", "train", *args], capture_output=True, text=True, timeout=timeout)


def test_stft_loss_is_zero_only_for_identical_signals():
    loss = MultiResolutionSTFTLoss((64, 128))
    x = torch.randn(2, 2048)
    assert loss(x, x).item() < 1e-5
    assert loss(0.5 * x, x).item() > 0.1 and loss(torch.randn(2, 2048), x).item() > 0.5


def test_alignment_drops_the_model_delay():
    task = EnhancementTask(model_config={"hidden": 8, "layers": 1})
    estimate, target = task.aligned(torch.arange(10.0).repeat(1, 100), torch.arange(1000.0)[None])
    assert estimate.shape[-1] == target.shape[-1] == 1000 - task.model.delay_samples


def test_train_test_and_resume(tmp_path, tiny_corpus):
    conf = recipe(tmp_path, tiny_corpus)
    done = train("--config", str(conf))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test_unseen/enhanced/si_sdr" in done.stdout and "test/noisy/pesq" in done.stdout
    last = tmp_path / "ckpt" / "last.ckpt"
    assert last.exists() and torch.load(last, weights_only=False)["global_step"] == 2
    resumed = train("--config", str(conf), "--ckpt_path", str(last), "--trainer.max_steps", "4", "--test", "false")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == 4

    out = tmp_path / "eval"
    done = subprocess.run([sys.executable, "-m", "speechnorm", "evaluate", str(last), "--split", "test_unseen",
                           "--out", str(out), "--items", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["items"] == 2 and len(result["per_item"]) == 2
    for key in ("noisy/si_sdr", "enhanced/pesq", "enhanced/stoi", "enhanced/dnsmos_ovrl"):
        assert math.isfinite(result["mean"][key]), key
    assert "| si_sdr |" in (out / "metrics.md").read_text() and len(list(out.glob("test_unseen_*.png"))) == 2

    # the exported ONNX model, evaluated through onnxruntime, scores what the checkpoint scores
    exported = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "speechnorm", "export", str(last), "-o", str(exported), "--max-mics", "8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run([sys.executable, "-m", "speechnorm", "evaluate", str(exported / "model.onnx"), "--split",
                           "test_unseen", "--out", str(tmp_path / "eval_onnx"), "--items", "2"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    onnx_result = json.loads((tmp_path / "eval_onnx" / "metrics.json").read_text())
    assert onnx_result["model"]["backend"] == "onnxruntime"
    for a, b in zip(result["per_item"], onnx_result["per_item"]):
        # the same clips (a float summation order may differ between processes: 1e-4 dB, not another clip)
        assert abs(a["enhanced/si_sdr"] - b["enhanced/si_sdr"]) < 0.01 and abs(a["noisy/si_sdr"] - b["noisy/si_sdr"]) < 1e-4


def test_evaluate_refuses_bad_paths_in_one_line(tmp_path):
    (tmp_path / "bare").mkdir()
    for path, message in ((tmp_path / "none.ckpt", "no checkpoint at"), (tmp_path / "m.onnx", "no exported model at"),
                          (tmp_path / "bare", "no checkpoint at")):
        done = subprocess.run([sys.executable, "-m", "speechnorm", "evaluate", str(path)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_batch_size_one_and_other_normalizers(tmp_path, tiny_corpus):
    conf = recipe(tmp_path, tiny_corpus, **{"data.batch_size": 1, "model.norm": "batch"})
    done = train("--config", str(conf), "--test", "false")
    assert done.returncode == 0, done.stderr[-3000:]


def test_nan_loss_stops_with_a_clear_message(tmp_path, tiny_corpus):
    conf = recipe(tmp_path, tiny_corpus, **{"model.lr": float("inf")})
    done = train("--config", str(conf), "--trainer.max_steps", "3", "--trainer.gradient_clip_val", "null", "--test", "false")
    assert done.returncode != 0
    assert "loss is nan" in done.stderr or "NaN or inf" in done.stderr


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_ddp_two_cpu_processes(tmp_path, tiny_corpus):
    conf = recipe(tmp_path, tiny_corpus, **{"trainer.devices": 2, "trainer.strategy": "ddp", "data.train_items": 8})
    done = train("--config", str(conf), "--test", "false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ckpt" / "last.ckpt").exists()


def test_dnsmos_scores_an_estimate_that_peaks_beyond_full_scale():
    from speechnorm.scoring import dnsmos

    t = torch.arange(32000) / 16000
    loud = 3.0 * torch.sin(2 * torch.pi * 220 * t) * (0.5 + 0.5 * torch.sin(2 * torch.pi * 2 * t))
    scores = dnsmos(loud, 16000)
    assert scores == dnsmos(loud / loud.abs().max(), 16000)  # scaled to full scale, not refused


def test_checkpoints_record_their_normalizer_defaults_and_old_ones_keep_theirs(tmp_path):
    """A bare "online" in a checkpoint written before the defaults changed (no version recorded)
    loads, and resumes, as the function it was trained as: alpha_fwd 0.999."""
    from conftest import save_checkpoint

    from speechnorm.models.checkpoint import NORM_DEFAULTS_KEY, load_model
    from speechnorm.norm import OnlineNorm

    def alphas(model):
        return {m.alpha_fwd for m in model.modules() if isinstance(m, OnlineNorm)}

    current = save_checkpoint(tmp_path / "current.ckpt", hidden=32, layers=1)
    legacy = tmp_path / "legacy.ckpt"
    stored = torch.load(current, weights_only=False)
    del stored[NORM_DEFAULTS_KEY]
    torch.save(stored, legacy)

    model, info = load_model(current)
    assert alphas(model) == {0.99} and info["norm"] == "online"
    model, info = load_model(legacy)
    assert alphas(model) == {0.999} and info["norm"] == "online(alpha_fwd=0.999)"

    task = EnhancementTask(model="tac_gru", model_config={"hidden": 32, "layers": 1})
    task.on_load_checkpoint(stored)  # what Lightning calls on resume, before the weights load
    assert alphas(task.model) == {0.999} and task.hparams.norm == "online(alpha_fwd=0.999)"
    task.model.load_state_dict(model.state_dict())
    saved = {}
    task.on_save_checkpoint(saved)
    assert saved[NORM_DEFAULTS_KEY] >= 2


def test_warm_start_copies_the_weights_and_refuses_another_model(tmp_path):
    from conftest import save_checkpoint

    from speechnorm.models.checkpoint import load_model

    source = save_checkpoint(tmp_path / "source.ckpt", hidden=32, layers=1)
    task = EnhancementTask(model="tac_gru", size="small", model_config={"hidden": 32, "layers": 1}, init_from=str(source))
    expected, _ = load_model(source)
    for (name, value), (_, wanted) in zip(task.model.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(value, wanted), name  # weights and normalizer statistics alike
    with pytest.raises(ValueError, match="init_from .* does not match"):
        EnhancementTask(model="tac_gru", size="small", model_config={"hidden": 16, "layers": 1}, init_from=str(source))


def test_dnsmos_sessions_use_torch_threads_and_score_as_speechmos_does():
    """``speechnorm.scoring.dnsmos`` makes speechmos's ONNX sessions with torch's thread count (not
    a thread per core), and scores exactly what speechmos's own sessions score."""
    import speechmos.dnsmos as speechmos_dnsmos

    from speechnorm.scoring import dnsmos

    t = torch.arange(40000) / 16000
    voiced = 0.3 * torch.sin(2 * torch.pi * 180 * t) * (0.5 + 0.5 * torch.sin(2 * torch.pi * 3 * t))
    noisy = voiced + 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ours = dnsmos(noisy, 16000)
        assert speechmos_dnsmos.dnsmos.onnx_sess.get_session_options().intra_op_num_threads == 1
        speechmos_dnsmos.dnsmos = None  # speechmos makes its own default sessions again
        theirs = speechmos_dnsmos.run(noisy.numpy(), sr=16000)
        assert speechmos_dnsmos.dnsmos.onnx_sess.get_session_options().intra_op_num_threads == 0  # its default
        assert ours == pytest.approx({"dnsmos_sig": theirs["sig_mos"], "dnsmos_bak": theirs["bak_mos"],
                                      "dnsmos_ovrl": theirs["ovrl_mos"]}, abs=1e-5)
        assert dnsmos(noisy, 16000) == ours  # ours again (its sessions remade), the same
        assert speechmos_dnsmos.dnsmos.onnx_sess.get_session_options().intra_op_num_threads == 1
    finally:
        torch.set_num_threads(threads)


def test_last_checkpoint_follows_every_validation_not_only_improvements(tmp_path, tiny_corpus):
    """The recipes' checkpointing: a monitored best checkpoint plus ``last.ckpt`` written at every
    validation. Monitoring ``step`` with mode "min" makes only the first validation an improvement:
    a monitored callback's own ``save_last`` then leaves last.ckpt at that first step (so a
    stopped run would resume from there), while the recipes' second callback keeps it current."""
    best = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / "ckpt"), "monitor": "step", "mode": "min", "save_top_k": 1,
                          "filename": "best"}}
    latest = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
              "init_args": {"dirpath": str(tmp_path / "ckpt"), "filename": "last", "save_top_k": 1,
                            "enable_version_counter": False}}
    steps = {"trainer.max_steps": 6, "trainer.val_check_interval": 2, "data.train_items": 12}
    conf = recipe(tmp_path, tiny_corpus, **steps, **{"trainer.callbacks": [best, latest]})
    done = train("--config", str(conf), "--test", "false")
    assert done.returncode == 0, done.stderr[-3000:]
    saved = lambda name: torch.load(tmp_path / "ckpt" / name, weights_only=False)["global_step"]  # noqa: E731
    assert saved("best.ckpt") == 2 and saved("last.ckpt") == 6
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.ckpt", "last.ckpt"]
    # the failure it fixes: save_last on the monitored callback alone
    alone = tmp_path / "alone"
    alone.mkdir()
    best["init_args"].update(dirpath=str(alone / "ckpt"), save_last=True)
    conf = recipe(alone, tiny_corpus, **steps, **{"trainer.callbacks": [best]})
    assert train("--config", str(conf), "--test", "false").returncode == 0
    assert torch.load(alone / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 2


def test_recipes_write_last_at_every_validation():
    """Every recipe that monitors a score also has the monitor-less callback that writes last.ckpt."""
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[2].glob("recipes/**/*.yaml")):
        callbacks = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("callbacks") or []
        checkpoints = [c["init_args"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
        if any(c.get("monitor") for c in checkpoints):
            assert any(not c.get("monitor") and c.get("filename") == "last" and c.get("enable_version_counter") is False
                       for c in checkpoints), path
            assert not any(c.get("monitor") and c.get("save_last") for c in checkpoints), path
