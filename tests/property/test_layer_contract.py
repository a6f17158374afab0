"""The streaming contract for every building block: scanning step == forward, causality, and a
state that matches its declaration, for every registered layer (``speechnorm.models.layers.LAYERS``)
and a few compositions; a layer whose spec lies about its state fails with a message naming it."""

import pytest
import torch
from torch import Tensor

from speechnorm.models.layers import GRU, LAYERS, TAC, Activation, CausalConv2d, Residual, Sequential, Streamable
from speechnorm.norm import make_norm
from speechnorm.state import StateSpec, check_state, flatten

EXAMPLES = {
    **{name: example for name, (_, example) in LAYERS.all().items()},
    "residual_gru_online": lambda: (Residual(Sequential(GRU(5, 5), make_norm("online", 5))), (2, 5, 9)),
    "conv_norm_act": lambda: (Sequential(CausalConv2d(3, 4, in_freq=7), make_norm("online", 4), Activation(4)), (2, 3, 9, 7)),
}


def test_every_registered_layer_has_an_example_of_its_own_class():
    for name, (cls, example) in LAYERS.all().items():
        layer, _ = example()
        assert type(layer) is cls, name


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_step_scan_equals_forward_and_is_causal(name):
    layer, shape = EXAMPLES[name]()
    layer = layer.eval()
    time = layer.TIME_AXIS
    x = torch.randn(shape)
    with torch.no_grad():
        whole = layer(x)
        state = layer.initial_state(shape[0])
        assert isinstance(state, dict)
        check_state(layer, state, shape[0])
        frames = []
        for t in range(shape[time]):
            y_t, state = layer.step(x.select(time, t), state)
            check_state(layer, state, shape[0])  # every hop returns what the layer declares
            frames.append(y_t)
        torch.testing.assert_close(torch.stack(frames, dim=time), whole, atol=1e-5, rtol=1e-5)
        changed = x.clone()
        later = changed.narrow(time, 5, shape[time] - 5)
        later.copy_(torch.randn_like(later))
        torch.testing.assert_close(layer(changed).narrow(time, 0, 5), whole.narrow(time, 0, 5))


@pytest.mark.parametrize("mics", [1, 2, 5])
def test_tac_is_permutation_equivariant_for_any_mic_count(mics):
    tac = TAC(6, 8)
    x = torch.randn(2, mics, 6, 9)
    order = torch.randperm(mics)
    torch.testing.assert_close(tac(x[:, order]), tac(x)[:, order], atol=1e-6, rtol=1e-6)
    frames = torch.stack([tac.step(x[..., t], {})[0] for t in range(9)], dim=-1)
    torch.testing.assert_close(frames, tac(x))


def test_tac_mixes_information_across_mics():
    tac = TAC(4, 8)
    x = torch.randn(1, 3, 4, 5)
    other = x.clone()
    other[:, 2] += 1.0
    assert not torch.allclose(tac(x)[:, 0], tac(other)[:, 0])


class Delay(Streamable):
    """A one-frame delay, y[t] = x[t - 1]: the README's "add a layer" example (run here as a test)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (1, 0))[..., :-1]

    def state_spec(self) -> dict[str, StateSpec]:
        return {"previous": StateSpec(torch.zeros(self.channels), "the last input frame (B, C)")}

    def step(self, x_t: Tensor, state: dict) -> tuple[Tensor, dict]:
        return state["previous"], {"previous": x_t}


def test_a_new_layer_needs_only_forward_step_and_its_spec():
    layer = Sequential(Delay(4), make_norm("online", 4))
    x = torch.randn(2, 4, 6)
    state = layer.initial_state(2)
    assert list(flatten(state)) == ["layers.0.previous", "layers.1.mean", "layers.1.var"]
    frames = []
    for t in range(6):
        y_t, state = layer.step(x[:, :, t], state)
        frames.append(y_t)
    torch.testing.assert_close(torch.stack(frames, dim=2), layer(x))


class WrongShape(Delay):
    def step(self, x_t: Tensor, state: dict) -> tuple[Tensor, dict]:
        return state["previous"], {"previous": x_t[:, :-1]}  # drops a channel: not what the spec says


class WrongAxis(Delay):
    def state_spec(self) -> dict[str, StateSpec]:
        return {"previous": StateSpec(torch.zeros(self.channels), "the last input frame", stream_axis=1)}


@pytest.mark.parametrize("cls", [WrongShape, WrongAxis])
def test_a_layer_with_a_wrong_spec_fails_naming_the_layer_and_the_state(cls):
    layer = Sequential(Activation(4), cls(4))
    with pytest.raises(ValueError, match=rf"{cls.__name__}: state 'layers.1.previous' has shape"):
        state = layer.initial_state(3)
        check_state(layer, state, 3)
        _, state = layer.step(torch.randn(3, 4), state)
        check_state(layer, state, 3)
