"""The one LightningModule every recipe uses: an enhancement model, its loss, metrics and optimiser.

Loss: negative SI-SDR plus a multi-resolution STFT magnitude term (weights configurable), on the
model output aligned to the target (the output lags by ``model.delay_samples``). Metrics:
SI-SDR, wide-band PESQ and STOI on validation and test (torchmetrics), DNSMOS SIG/BAK/OVRL on
test (the ``speechmos`` package, whose ONNX models ship in its wheel), each also for the noisy
reference mic so every number has its baseline beside it.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
from torch import Tensor
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as si_sdr

from .dsp import STFT
from .models import build
from .norm import DEFAULTS_VERSION, pin_defaults
from .norm.finite import raise_if_nonfinite
from .scoring import align, quality_metrics, score_clip

log = logging.getLogger(__name__)
TEST_SPLITS = ("test", "test_unseen")


class MultiResolutionSTFTLoss(torch.nn.Module):
    """Mean over resolutions of the L1 distance of log magnitudes and the spectral convergence."""

    def __init__(self, resolutions=(256, 512, 1024)):
        super().__init__()
        self.stfts = torch.nn.ModuleList(STFT(n, n // 2) for n in resolutions)

    def forward(self, estimate: Tensor, target: Tensor) -> Tensor:
        total = estimate.new_zeros(())
        for stft in self.stfts:
            usable = estimate.shape[-1] // stft.hop * stft.hop
            mags = [stft.analysis(s[..., :usable]).square().sum(dim=-3).add(1e-7).sqrt() for s in (estimate, target)]
            convergence = (mags[1] - mags[0]).norm() / (mags[1].norm() + 1e-7)
            total = total + convergence + (mags[0].log() - mags[1].log()).abs().mean()
        return total / len(self.stfts)


class EnhancementTask(L.LightningModule):
    """Train and evaluate a registered model (``speechnorm.models``).

    Args:
        model, norm, size: what ``speechnorm.models.build`` builds; ``model_config`` overrides.
        lr, weight_decay: AdamW. stft_weight, sisdr_weight: the loss mix.
        quality_every_val: compute PESQ/STOI in validation (slow on long validation sets).
        init_from: a checkpoint or released model folder whose model weights start this run (a warm
            start: weights only, not its optimizer or step count); its model must match this one,
            except that a plain model may start a personalized one (whose speaker FiLM starts at zero).
    """

    def __init__(
        self, model: str = "tac_gru", norm: str = "online", size: str = "small", model_config: dict | None = None,
        lr: float = 1e-3, weight_decay: float = 1e-5, sisdr_weight: float = 1.0, stft_weight: float = 1.0,
        quality_every_val: bool = True, init_from: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = build(model, norm=norm, size=size, **(model_config or {}))
        if init_from is not None:
            self._warm_start(init_from)
        self.stft_loss = MultiResolutionSTFTLoss()

    def _warm_start(self, path: str) -> None:
        from .models.checkpoint import load_model

        source, info = load_model(path)
        weights = source.state_dict()
        if self.model.personalized and not source.personalized:
            # a plain model starts a personalized one: its speaker FiLM starts at zero, i.e. as that model
            weights.update({k: v for k, v in self.model.state_dict().items() if k.startswith("speaker.")})
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as err:
            raise ValueError(f"init_from {path}: its model ({info.get('model')}, {info.get('size')}) does not match "
                             f"this one ({self.hparams.model}, {self.hparams.size}): {str(err).splitlines()[0]}") from None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from .models.checkpoint import NORM_DEFAULTS_KEY

        checkpoint[NORM_DEFAULTS_KEY] = DEFAULTS_VERSION  # what a bare "online" meant when this was written

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A run resumed from a checkpoint of older normalizer defaults continues the function it
        trained: the model is rebuilt with those defaults spelled out (before its weights load)."""
        from .models.checkpoint import NORM_DEFAULTS_KEY

        pinned = pin_defaults(self.hparams.norm, checkpoint.get(NORM_DEFAULTS_KEY))
        if pinned != self.hparams.norm:
            log.warning("checkpoint trained under older normalizer defaults: norm %r continues as %r",
                        self.hparams.norm, pinned)
            self.hparams.norm = pinned
            self.model = build(self.hparams.model, norm=pinned, size=self.hparams.size,
                               **(self.hparams.model_config or {}))

    def forward(self, noisy: Tensor, speaker: Tensor | None = None) -> Tensor:
        return self.model(noisy, speaker=speaker)

    def aligned(self, estimate: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Drop the model's fixed delay: estimate[n + delay] estimates target[n] (``scoring.align``)."""
        return align(estimate, target, self.model.delay_samples)

    def common_step(self, batch, stage: str) -> tuple[Tensor, Tensor, Tensor]:
        noisy, target, *speaker = batch  # personalized data: (noisy, target, embedding)
        estimate = self(noisy, *speaker)
        raise_if_nonfinite()  # the normalizers' input check, deferred on CUDA: one sync here, none in the model
        estimate, target = self.aligned(estimate, target)
        sdr = si_sdr(estimate, target).mean()
        loss = -self.hparams.sisdr_weight * sdr + self.hparams.stft_weight * self.stft_loss(estimate, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()} at step {self.global_step}; stopping (the last checkpoint is kept)")
        size = noisy.shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=stage != "train")
        self.log(f"{stage}/si_sdr", sdr, prog_bar=stage != "train", batch_size=size, sync_dist=stage != "train")
        return loss, estimate, target

    def training_step(self, batch, batch_idx):
        return self.common_step(batch, "train")[0]

    def validation_step(self, batch, batch_idx):
        noisy = batch[0]
        _, estimate, target = self.common_step(batch, "val")
        reference = noisy[:, 0, : target.shape[-1]]  # the input is not delayed: the same span as the target
        self.log("val/si_sdr_noisy", si_sdr(reference, target).mean(), batch_size=noisy.shape[0], sync_dist=True)
        if self.hparams.quality_every_val:
            for est, ref, tgt in zip(estimate, reference, target):
                for key, value in quality_metrics(est.float(), tgt.float(), self.model.sample_rate).items():
                    if key != "si_sdr" and value == value:  # SI-SDR is logged per batch above; NaN: PESQ failed
                        self.log(f"val/{key}", value, batch_size=1, sync_dist=True)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        split = TEST_SPLITS[dataloader_idx]
        noisy, target, *speaker = batch
        for item_noisy, estimate, item_target in zip(noisy, self(noisy, *speaker), target):
            scores = score_clip(estimate, item_noisy, item_target, self.model.sample_rate, self.model.delay_samples)
            for key, value in scores.items():
                if value == value:
                    self.log(f"{split}/{key}", value, batch_size=1, add_dataloader_idx=False, sync_dist=True)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over 5 % of the steps, then cosine decay to 5 % of ``lr``. Reads
        ``trainer.max_steps`` at every step, so a resumed run may extend it."""
        total = self.trainer.max_steps if self.trainer is not None and self.trainer.max_steps > 0 else 0
        if total == 0:
            return 1.0
        warmup = max(1, total // 20)
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
