"""OnlineNorm trains under Lightning's bf16-mixed precision (autocast), on both backends."""

import pytest
import torch

lightning = pytest.importorskip("lightning")

from speechnorm.norm import OnlineNorm  # noqa: E402
from speechnorm.norm.kernels import triton_available, use_backend  # noqa: E402


class Tiny(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv1d(3, 8, 1), OnlineNorm(8, stream_axis="time"), torch.nn.Conv1d(8, 1, 1))
        self.losses = []

    def training_step(self, batch, _):
        (x,) = batch
        loss = self.net(x).float().square().mean()
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_mixed_training_runs_and_learns(backend, tmp_path):
    if backend == "triton" and not triton_available():
        pytest.skip("Triton cannot run here")
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 20) + 1.0)
    model = Tiny()
    trainer = lightning.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=6, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    with use_backend(backend):
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    assert len(model.losses) == 6 and all(torch.isfinite(torch.tensor(model.losses)))
    assert model.losses[-1] < model.losses[0]
    norm = model.net[1]
    assert norm.weight.grad is None or norm.weight.grad.dtype == torch.float32
    assert not torch.equal(norm.running_mean, torch.zeros(8))
