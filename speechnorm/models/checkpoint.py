"""Load a trained model from a training checkpoint or a released model folder, without the
training code: the checkpoint's hyper-parameters name the model, its ``model.*`` weights fill it.

    model, info = load_model("models/tac_gru_online_small_v2")   # or runs/.../last.ckpt

The one loader of the project: evaluation, export, streaming and the release script all use it,
so one checkpoint is one model everywhere. ``info`` holds the checkpoint's model hyper-parameters
and, under ``"data"``, its data module's (what evaluation needs to rebuild the recipe's splits).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..norm import pin_defaults
from .base import SpectralEnhancer
from .registry import build

MODEL_PREFIX = "model."
# Where a checkpoint records the normalizer defaults it was trained under (``speechnorm.task``).
NORM_DEFAULTS_KEY = "speechnorm_norm_defaults"


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file, or a folder holding ``model.ckpt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (give a .ckpt file or a folder holding model.ckpt)")
    return path


def read_checkpoint(path: str | Path) -> dict:
    path = resolve_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a speechnorm training checkpoint (no state_dict)")
    return checkpoint


def load_model(path: str | Path) -> tuple[SpectralEnhancer, dict]:
    """The model in eval mode, and the checkpoint's hyper-parameters (model name, norm, size, config;
    ``"data"``: the data module's, without LightningCLI's private keys), from one read."""
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    hparams["data"] = {k: v for k, v in checkpoint.get("datamodule_hyper_parameters", {}).items() if not k.startswith("_")}
    try:
        hparams["norm"] = pin_defaults(hparams.get("norm", "online"), checkpoint.get(NORM_DEFAULTS_KEY))
        model = build(hparams.get("model", "tac_gru"), norm=hparams["norm"],
                      size=hparams.get("size", "small"), **(hparams.get("model_config") or {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{resolve_checkpoint(path)}: cannot rebuild its model ({err})") from None
    weights = {k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(MODEL_PREFIX)}
    model.load_state_dict(weights)
    return model.eval(), hparams
