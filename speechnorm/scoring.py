"""One way to score a clip, for every number the project reports.

``score_clip`` is what the LightningModule's test step, ``speechnorm evaluate``, the peer
comparison, the real-speech evaluation and the ablation report all call, so one checkpoint on one
clip has one number. The rule: a system's output lags its input by ``delay`` samples (the
model's fixed delay; 0 for a peer whose output is already aligned); the estimate is aligned to
the target and both are cut to the span the model covers, the first N - ``delay`` samples, where
N is the target's length; the noisy reference mic is scored over that same span. Metrics:
SI-SDR, wide-band PESQ and STOI (torchmetrics), DNSMOS P.835 (``speechmos``), and for
personalized evaluation TSOS (``tsos``: how much of the target's own speech is suppressed).
"""

from __future__ import annotations

import logging

from pathlib import Path

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


TSOS_FRAME, TSOS_HOP = 320, 160  # 20 ms frames every 10 ms at 16 kHz
TSOS_ACTIVE_DB = 30.0  # a target frame is speech when within this of the target's loudest frame
TSOS_DROP_DB = 10.0  # ... and over-suppressed when the estimate is this far below it


def tsos(estimate: Tensor, target: Tensor) -> float:
    """Target-speaker over-suppression: the fraction (0-1) of the target's speech frames in which
    the estimate is more than ``TSOS_DROP_DB`` below the target.

    The failure a personalized enhancer must avoid is removing its own user's speech (Eskimez et
    al., "Personalized speech enhancement: new models and comprehensive evaluation", ICASSP 2022,
    who introduced the measure). Our definition: 20 ms frames every 10 ms; the estimate is first
    scaled by the least-squares gain onto the target (as SI-SDR does), so a level change of the
    whole output is not suppression; the target's speech frames are those within
    ``TSOS_ACTIVE_DB`` of its loudest frame. NaN when the target has no frame."""
    estimate, target = torch.as_tensor(estimate).double(), torch.as_tensor(target).double()
    length = min(estimate.shape[-1], target.shape[-1])
    estimate, target = estimate[:length], target[:length]
    if length < TSOS_FRAME:
        return float("nan")
    gain = (estimate @ target) / (estimate @ estimate).clamp_min(1e-20)
    energy = lambda x: x.unfold(0, TSOS_FRAME, TSOS_HOP).square().sum(dim=1)  # noqa: E731
    target_energy, estimate_energy = energy(target), energy(gain * estimate)
    active = target_energy > target_energy.max() * 10 ** (-TSOS_ACTIVE_DB / 10)
    if not bool(active.any()):
        return float("nan")
    suppressed = estimate_energy < target_energy * 10 ** (-TSOS_DROP_DB / 10)
    return float((suppressed & active).sum() / active.sum())


def _dnsmos_model():
    """speechmos's DNSMOS module, its ONNX sessions made once with as many threads as torch uses.

    speechmos makes them with onnxruntime's default, a thread per core, so a scoring job given one
    thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``) still took every core from the
    training beside it. Same models, same scores (tested); only the thread count differs."""
    import onnxruntime as ort
    from speechmos import dnsmos as model

    threads = torch.get_num_threads()
    current = getattr(model, "dnsmos", None)
    if current is None or getattr(current, "speechnorm_threads", None) != threads:
        folder = Path(model.__file__).parent / "dnsmos_models"
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        sessions = model.DNSMOS.__new__(model.DNSMOS)  # speechmos's class, our sessions
        sessions.primary_model_path = str(folder / "sig_bak_ovr.onnx")  # the path its run() compares
        sessions.onnx_sess = ort.InferenceSession(sessions.primary_model_path, options,
                                                  providers=["CPUExecutionProvider"])
        sessions.p808_onnx_sess = ort.InferenceSession(str(folder / "model_v8.onnx"), options,
                                                       providers=["CPUExecutionProvider"])
        sessions.speechnorm_threads = threads
        model.dnsmos = sessions
    return model


def dnsmos(audio: Tensor, sample_rate: int) -> dict[str, float]:
    """DNSMOS P.835 (SIG, BAK, OVRL) of one utterance, with the models shipped in ``speechmos``.

    DNSMOS takes samples in [-1, 1]; an estimate that peaks beyond (an untrained or briefly trained
    model's can) is scaled down to peak at 1 rather than refused."""
    model = _dnsmos_model()
    samples = audio.detach().cpu().float().numpy()
    peak = float(abs(samples).max()) if samples.size else 0.0
    scores = model.run(samples / peak if peak > 1.0 else samples, sr=sample_rate)
    return {"dnsmos_sig": scores["sig_mos"], "dnsmos_bak": scores["bak_mos"], "dnsmos_ovrl": scores["ovrl_mos"]}


def score_clip(estimate, noisy, target, sample_rate: int, delay: int = 0, with_dnsmos: bool = True,
               with_noisy: bool = True, with_tsos: bool = False) -> dict[str, float]:
    """``{"enhanced/<metric>": …, "noisy/<metric>": …}`` for one clip: ``estimate`` (N,) lagging by
    ``delay``, ``noisy`` (M, N) whose mic 0 is the reference, ``target`` (N,). Tensors or arrays.
    ``with_noisy=False`` leaves the noisy reference out (a comparison that scores it once as a system);
    ``with_tsos`` adds ``tsos`` (personalized evaluation)."""
    estimate, noisy, target = (torch.as_tensor(x).float() for x in (estimate, noisy, target))
    estimate, target = align(estimate[: target.shape[-1]], target, delay)
    reference = noisy[0, : target.shape[-1]]  # the input is not delayed: the same span as the target
    scores = {}
    for who, signal in (("enhanced", estimate), ("noisy", reference))[: 2 if with_noisy else 1]:
        metrics = quality_metrics(signal, target, sample_rate)
        if with_dnsmos:
            metrics.update(dnsmos(signal, sample_rate))
        if with_tsos:
            metrics["tsos"] = tsos(signal, target)
        scores.update({f"{who}/{k}": v for k, v in metrics.items()})
    return scores
