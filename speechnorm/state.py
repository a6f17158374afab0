"""Streaming state that names itself: one declaration per layer, composed by module path.

A streamable layer declares the tensors it carries from one frame to the next, once, in
``state_spec()``: a name, the value one stream starts from, which axis holds the streams, and
what it means. Everything else follows from that declaration:

    state = initial_state(module, batch)        # a nested dict mirroring the module tree
    y_t, state = module.step(x_t, state)        # each layer reads and returns its own entries
    flatten(state)                              # {"rnn.layers.0.body.layers.1.mean": tensor, ...}

The flat names are the module paths (``model.get_submodule``) plus the declared name; export
turns them into the ONNX tensor names (``state.<path>`` / ``next_state.<path>``), and
``check_state`` names the layer and the entry when a state does not match its declaration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

State = dict  # nested: str -> Tensor | State


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of a layer.

    ``initial``: the value one stream starts from, without the stream axis (a copy is taken per
    stream). ``stream_axis``: where the streams (the batch) sit in the full tensor, e.g. 1 for a
    GRU's (layers, batch, hidden). ``doc``: what the tensor holds, for people reading an exported graph.
    """

    initial: Tensor
    doc: str
    stream_axis: int = 0

    def make(self, batch: int, device=None, dtype=None) -> Tensor:
        value = self.initial.to(device=device, dtype=dtype or torch.float32).unsqueeze(self.stream_axis)
        sizes = [-1] * value.dim()
        sizes[self.stream_axis] = batch
        return value.expand(*sizes).clone()

    def shape(self, batch: int) -> tuple[int, ...]:
        shape = list(self.initial.shape)
        shape.insert(self.stream_axis, batch)
        return tuple(shape)


def declared(module: nn.Module) -> dict[str, StateSpec]:
    """The module's own state entries (not its children's)."""
    spec = getattr(module, "state_spec", None)
    return spec() if callable(spec) else {}


def specs(module: nn.Module, prefix: str = "") -> dict[str, tuple[nn.Module, StateSpec]]:
    """Every state entry under ``module``, by flat path: (declaring module, spec)."""
    out = {f"{prefix}{name}": (module, spec) for name, spec in declared(module).items()}
    for name, child in module.named_children():
        out.update(specs(child, f"{prefix}{name}."))
    return out


def initial_state(module: nn.Module, batch: int, device=None, dtype=None) -> State:
    """The state before the first frame, for ``batch`` streams: nested like the module tree."""
    state = {name: spec.make(batch, device, dtype) for name, spec in declared(module).items()}
    for name, child in module.named_children():
        child_state = initial_state(child, batch, device, dtype)
        if child_state:
            state[name] = child_state
    return state


def flatten(state: State, prefix: str = "") -> dict[str, Tensor]:
    """{"a": {"b": t}} -> {"a.b": t}, in insertion order (the order of the module tree)."""
    flat = {}
    for name, value in state.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def unflatten(flat: dict[str, Tensor]) -> State:
    state: State = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = state
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return state


def check_state(module: nn.Module, state: State, batch: int) -> None:
    """Raise a ValueError naming the layer and the entry where ``state`` differs from the declarations."""
    expected = specs(module)
    got = flatten(state)
    for path in expected.keys() - got.keys():
        layer, _ = expected[path]
        raise ValueError(f"{type(layer).__name__} declares state '{path}', but the state has no such entry")
    for path in got.keys() - expected.keys():
        raise ValueError(f"the state has an entry '{path}' that no layer of {type(module).__name__} declares")
    for path, (layer, spec) in expected.items():
        if tuple(got[path].shape) != spec.shape(batch):
            raise ValueError(f"{type(layer).__name__}: state '{path}' has shape {tuple(got[path].shape)}, but its spec "
                             f"declares {spec.shape(batch)} for {batch} stream(s) (stream axis {spec.stream_axis})")
