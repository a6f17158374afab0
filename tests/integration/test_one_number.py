"""One checkpoint on one clip has one number, whichever path scores it: the LightningModule's test
step, ``speechnorm evaluate`` (PyTorch and ONNX), and the comparison scripts (evaluate_peers /
evaluate_real), all through ``speechnorm.scoring.score_clip``."""

import sys
from pathlib import Path

import numpy as np
import torch

from speechnorm.evaluate import Runner, evaluate
from speechnorm.export import export_model
from speechnorm.models.checkpoint import load_model
from speechnorm.task import EnhancementTask

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from evaluate_peers import ours, score  # noqa: E402


def tiny_checkpoint(tmp_path, tiny_corpus):
    """A small untrained TAC-GRU checkpoint whose data settings point at the tiny corpus."""
    from conftest import save_checkpoint

    data = {"clean_dir": str(tiny_corpus / "clean"), "noise_dir": str(tiny_corpus / "noise"), "train_items": 4,
            "val_items": 2, "test_items": 2, "seconds": 0.5, "batch_size": 2, "seed": 3}
    checkpoint = save_checkpoint(tmp_path / "model.ckpt", hidden=32, layers=1)
    stored = torch.load(checkpoint, weights_only=False)
    stored["datamodule_hyper_parameters"] = data
    torch.save(stored, checkpoint)
    return checkpoint, data


def test_every_scoring_path_gives_the_same_number(tmp_path, tiny_corpus):
    checkpoint, data = tiny_checkpoint(tmp_path, tiny_corpus)

    by_evaluate = evaluate(checkpoint, split="test", out=tmp_path / "eval", items=1, pictures=0)["per_item"][0]
    export_model(checkpoint, tmp_path / "exported", max_mics=8)
    by_onnx = evaluate(tmp_path / "exported" / "model.onnx", split="test", out=tmp_path / "eval_onnx", items=1,
                       pictures=0)["per_item"][0]

    from speechnorm.data.datamodule import EnhancementDataModule

    module = EnhancementDataModule(**data)
    module.setup()
    noisy, target = module.datasets["test"][0]

    model, hparams = load_model(checkpoint)
    task = EnhancementTask(model="tac_gru", model_config={"hidden": 32, "layers": 1})
    task.model.load_state_dict(model.state_dict())
    task.eval()
    logged = {}
    task.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    with torch.no_grad():
        task.test_step((noisy[None], target[None]), 0, 0)

    by_script = score(ours(Runner(checkpoint))(noisy.numpy()), noisy.numpy(), target.numpy())
    noisy_by_script = score(noisy.numpy()[0].copy(), noisy.numpy(), target.numpy())
    for metric in ("si_sdr", "pesq", "stoi", "dnsmos_ovrl"):
        assert by_evaluate[f"enhanced/{metric}"] == logged[f"test/enhanced/{metric}"] == by_script[metric], metric
        assert by_evaluate[f"noisy/{metric}"] == logged[f"test/noisy/{metric}"] == noisy_by_script[metric], metric
        np.testing.assert_allclose(by_onnx[f"enhanced/{metric}"], by_evaluate[f"enhanced/{metric}"], atol=1e-3)


def test_evaluate_at_another_input_level(tmp_path, tiny_corpus):
    """``gain_db`` scores the same clips scaled: SI-SDR of the noisy input is scale-invariant, so it
    is unchanged; the model sees another level; out-of-range gains are refused."""
    import pytest

    checkpoint, _ = tiny_checkpoint(tmp_path, tiny_corpus)
    runs = {gain: evaluate(checkpoint, split="test", out=tmp_path / f"g{gain}", items=2, pictures=0, dnsmos=False,
                           gain_db=gain) for gain in (0.0, -30.0)}
    assert runs[-30.0]["gain_db"] == -30.0
    for quiet, loud in zip(runs[-30.0]["per_item"], runs[0.0]["per_item"]):
        np.testing.assert_allclose(quiet["noisy/si_sdr"], loud["noisy/si_sdr"], atol=1e-3)
    with pytest.raises(ValueError, match="gain_db"):
        evaluate(checkpoint, split="test", out=tmp_path / "bad", items=1, gain_db=120.0)
