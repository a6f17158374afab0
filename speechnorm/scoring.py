"""One way to score a clip, for every number the project reports.

``score_clip`` is what the LightningModule's test step, ``speechnorm evaluate``, the peer
comparison, the real-speech evaluation and the ablation report all call, so one checkpoint on one
clip has one number. The rule: a system's output lags its input by ``delay`` samples (the
model's fixed delay; 0 for a peer whose output is already aligned); the estimate is aligned to
the target and both are cut to the span the model covers, the first N - ``delay`` samples, where
N is the target's length; the noisy reference mic is scored over that same span. Metrics:
SI-SDR, wide-band PESQ and STOI (torchmetrics), DNSMOS P.835 (``speechmos``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio as si_sdr

log = logging.getLogger(__name__)


def align(estimate: Tensor, target: Tensor, delay: int) -> tuple[Tensor, Tensor]:
    """Drop a fixed delay: estimate[..., n + delay] estimates target[..., n]; both cut to N - delay."""
    return (estimate[..., delay:], target[..., : target.shape[-1] - delay]) if delay else (estimate, target)


def quality_metrics(estimate: Tensor, target: Tensor, sample_rate: int) -> dict[str, float]:
    """SI-SDR, wide-band PESQ and STOI of one utterance (1-D tensors); PESQ is NaN where it fails."""
    from torchmetrics.functional.audio import perceptual_evaluation_speech_quality, short_time_objective_intelligibility

    out = {"si_sdr": si_sdr(estimate, target).item()}
    try:
        out["pesq"] = float(perceptual_evaluation_speech_quality(estimate, target, sample_rate, "wb"))
    except Exception as err:  # the PESQ library refuses e.g. utterances without speech
        log.warning("PESQ failed on one item (%s); left out of the mean", err)
        out["pesq"] = float("nan")
    out["stoi"] = float(short_time_objective_intelligibility(estimate, target, sample_rate))
    return out


def dnsmos(audio: Tensor, sample_rate: int) -> dict[str, float]:
    """DNSMOS P.835 (SIG, BAK, OVRL) of one utterance, with the models shipped in ``speechmos``.

    DNSMOS takes samples in [-1, 1]; an estimate that peaks beyond (an untrained or briefly trained
    model's can) is scaled down to peak at 1 rather than refused."""
    from speechmos import dnsmos as model

    samples = audio.detach().cpu().float().numpy()
    peak = float(abs(samples).max()) if samples.size else 0.0
    scores = model.run(samples / peak if peak > 1.0 else samples, sr=sample_rate)
    return {"dnsmos_sig": scores["sig_mos"], "dnsmos_bak": scores["bak_mos"], "dnsmos_ovrl": scores["ovrl_mos"]}


def score_clip(estimate, noisy, target, sample_rate: int, delay: int = 0, with_dnsmos: bool = True,
               with_noisy: bool = True) -> dict[str, float]:
    """``{"enhanced/<metric>": …, "noisy/<metric>": …}`` for one clip: ``estimate`` (N,) lagging by
    ``delay``, ``noisy`` (M, N) whose mic 0 is the reference, ``target`` (N,). Tensors or arrays.
    ``with_noisy=False`` leaves the noisy reference out (a comparison that scores it once as a system)."""
    estimate, noisy, target = (torch.as_tensor(x).float() for x in (estimate, noisy, target))
    estimate, target = align(estimate[: target.shape[-1]], target, delay)
    reference = noisy[0, : target.shape[-1]]  # the input is not delayed: the same span as the target
    scores = {}
    for who, signal in (("enhanced", estimate), ("noisy", reference))[: 2 if with_noisy else 1]:
        metrics = quality_metrics(signal, target, sample_rate)
        if with_dnsmos:
            metrics.update(dnsmos(signal, sample_rate))
        scores.update({f"{who}/{k}": v for k, v in metrics.items()})
    return scores
