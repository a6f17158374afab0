"""What the Triton path moves through memory and where it would make the host wait, measured in
Triton's interpreter on the CPU (no GPU needed).

    with trace() as t:
        out = layer(x)
    t.bytes, t.launches, t.syncs

- **Kernel bytes**: every load and store the interpreter executes, counted as the distinct
  addresses each access touches times the element size (a warp reads a coefficient shared by a
  row once), so a kernel that reads x once and writes out once counts 2 · x.nbytes.
- **Torch bytes**: every aten op outside the kernels, counted as the bytes of its tensor inputs
  and outputs (views, allocations and metadata ops move nothing).
- **Syncs**: aten ops that make the CPU wait for a GPU — reading a value on the host
  (``.item()``, ``bool(t)``: ``_local_scalar_dense``), data-dependent shapes (``nonzero``,
  ``masked_select``, ``unique``), and tensors made from host data (``torch.tensor``:
  ``lift_fresh``), which copy to the device from pageable memory.

``scripts/trace_bytes.py`` prints the table per D and dtype against BatchNorm's passes; the tests
assert the budgets.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset({"_local_scalar_dense", "nonzero", "nonzero_static", "masked_select", "unique", "_unique",
                      "_unique2", "unique_consecutive", "lift_fresh", "lift_fresh_copy", "repeat_interleave"})
NO_TRAFFIC = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
                        "lift_fresh", "set_", "_local_scalar_dense", "is_same_size"})


@dataclass
class Traffic:
    kernel_bytes: int = 0
    torch_bytes: int = 0
    launches: int = 0
    torch_ops: int = 0
    syncs: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return self.kernel_bytes + self.torch_bytes


def _tensor_bytes(values) -> int:
    total = 0
    for value in values:
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, (list, tuple)):
            total += _tensor_bytes(value)
    return total


class _TorchCounter(TorchDispatchMode):
    def __init__(self, traffic: Traffic, state: dict):
        super().__init__()
        self.traffic, self.state = traffic, state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.state["in_kernel"]:
            return out
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.traffic.syncs.append(name)
        if not (func.is_view or name in NO_TRAFFIC):
            self.traffic.torch_ops += 1
            outs = out if isinstance(out, (list, tuple)) else (out,)
            self.traffic.torch_bytes += _tensor_bytes(args) + _tensor_bytes(list(kwargs.values())) + _tensor_bytes(outs)
        return out


def _element_bytes(pointer_handle) -> int:
    return max(1, pointer_handle.get_element_ty().primitive_bitwidth // 8)


@contextlib.contextmanager
def trace():
    """Count kernel and torch traffic, launches and syncs inside the block (interpreter only)."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("traffic.trace needs Triton's interpreter: set TRITON_INTERPRET=1 before importing speechnorm")
    from triton.runtime import interpreter

    traffic, state = Traffic(), {"in_kernel": False}
    builder = interpreter.InterpreterBuilder
    originals = {name: getattr(builder, name) for name in
                 ("create_load", "create_masked_load", "create_store", "create_masked_store")}
    grid_call = interpreter.GridExecutor.__call__

    def count(ptrs, mask=None):
        addresses = ptrs.data if mask is None else ptrs.data[mask.data]
        traffic.kernel_bytes += int(np.unique(addresses).size) * _element_bytes(ptrs)

    def load(self, ptr, *args):
        count(ptr)
        return originals["create_load"](self, ptr, *args)

    def masked_load(self, ptrs, mask, *args):
        count(ptrs, mask)
        return originals["create_masked_load"](self, ptrs, mask, *args)

    def store(self, ptr, *args):
        count(ptr)
        return originals["create_store"](self, ptr, *args)

    def masked_store(self, ptrs, value, mask, *args):
        count(ptrs, mask)
        return originals["create_masked_store"](self, ptrs, value, mask, *args)

    def launch(executor, *args, **kwargs):
        traffic.launches += 1
        traffic.kernels.append(executor.fn.__name__)
        state["in_kernel"] = True
        try:
            return grid_call(executor, *args, **kwargs)
        finally:
            state["in_kernel"] = False

    patched = {"create_load": load, "create_masked_load": masked_load, "create_store": store,
               "create_masked_store": masked_store}
    for name, function in patched.items():
        setattr(builder, name, function)
    interpreter.GridExecutor.__call__ = launch
    try:
        with _TorchCounter(traffic, state):
            yield traffic
    finally:
        for name, function in originals.items():
            setattr(builder, name, function)
        interpreter.GridExecutor.__call__ = grid_call


@dataclass
class LayerTraffic:
    """One OnlineNorm training call, forward and backward apart, per element of x."""

    forward: Traffic
    backward: Traffic
    saved_bytes: int
    x_bytes: int
    elements: int

    def per_element(self) -> dict[str, float]:
        return {"forward": self.forward.bytes / self.elements, "backward": self.backward.bytes / self.elements,
                "saved_over_x": self.saved_bytes / self.x_bytes, "element": self.x_bytes / self.elements}


def batchnorm_bytes(element: int) -> dict[str, float]:
    """BatchNorm's passes over x, per element, as a fused training kernel makes them (cuDNN):
    forward 3 (read x for the statistics; read x, write y), backward 5 (read g and x for the
    reductions; read g and x, write ∂L/∂x); it saves x."""
    return {"forward": 3.0 * element, "backward": 5.0 * element, "saved_over_x": 1.0}


def layer_traffic(layer, x: torch.Tensor) -> LayerTraffic:
    """Trace one training call of ``layer`` on ``x`` (a fresh leaf), forward and backward apart."""
    from . import use_backend

    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    x = x.detach().requires_grad_(True)
    grad = torch.randn_like(x)
    with use_backend("triton"):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), trace() as forward:
            out = layer(x)
        with trace() as backward:
            out.backward(grad)
    return LayerTraffic(forward, backward, sum(saved), x.numel() * x.element_size(), x.numel())
