"""The non-finite input check of the stateful normalizers, without a host sync on a GPU.

One NaN or inf would poison a running statistic for every later sample, so Online Norm refuses
it. Asking "is every value finite?" on a CUDA tensor makes the CPU wait for the GPU, which stalls
the launch queue and makes CUDA-graph capture impossible. So the check has three modes:

- ``"sync"``: raise at once (the default on the CPU, where it costs nothing);
- ``"deferred"``: record the answer in a flag on the device, with no sync (the default on CUDA),
  and raise the same error at the next ``raise_if_nonfinite()``, which the training task calls once
  per step (one sync per step instead of several per layer) — graph capture works, because the
  flag update is an ordinary kernel;
- ``"off"``.

    with finite_check("sync"):      # immediate errors on the GPU too, e.g. while debugging
        ...
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

MODES = ("auto", "sync", "deferred", "off")
_mode = "auto"
_flags: dict[torch.device, Tensor] = {}
_where: dict[torch.device, set[str]] = {}


def message(where: str) -> str:
    return (f"{where}: input contains NaN or inf (or values whose square overflows); a streaming normalizer "
            "would carry it into every later sample — clean or clip the input first")


def mode_for(device: torch.device) -> str:
    """The mode in force for tensors on ``device``."""
    if _mode != "auto":
        return _mode
    return "deferred" if device.type == "cuda" else "sync"


def check(stats: Tensor, where: str) -> None:
    """Refuse non-finite ``stats`` (statistics that any NaN/inf in the input reaches).

    Skipped while tracing for export (a traced check would be a constant): the exported graph's
    caller, ``speechnorm.stream``, checks every hop before it enters the graph instead.
    """
    if torch.jit.is_tracing():
        return
    mode = mode_for(stats.device)
    if mode == "off":
        return
    bad = ~torch.isfinite(stats).all()
    if mode == "sync":
        if bool(bad):
            raise ValueError(message(where))
        return
    flag = _flags.get(stats.device)
    if flag is None:
        flag = _flags[stats.device] = torch.zeros((), dtype=torch.bool, device=stats.device)
    flag.logical_or_(bad)
    _where.setdefault(stats.device, set()).add(where)


def raise_if_nonfinite() -> None:
    """Raise the deferred error if any check since the last call saw NaN/inf (one sync per device
    with a flag; nothing at all when no deferred check ran). The flag is cleared either way."""
    for device, flag in list(_flags.items()):
        if bool(flag):
            flag.zero_()
            names = ", ".join(sorted(_where.pop(device, {"OnlineNorm"})))
            raise ValueError(message(names) + " (found by the deferred check, in a forward since the last check)")
        _where.pop(device, None)


def set_finite_check(mode: str) -> None:
    """Set the mode for the process (``"auto"``: sync on the CPU, deferred on CUDA)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"finite check mode must be one of {MODES}, got {mode!r}")
    _mode = mode


@contextlib.contextmanager
def finite_check(mode: str):
    """Use ``mode`` (one of ``MODES``) inside the block."""
    previous = _mode
    set_finite_check(mode)
    try:
        yield
    finally:
        set_finite_check(previous)
