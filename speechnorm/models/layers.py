"""Streamable building blocks: every layer here runs on a whole sequence and one frame at a time.

The contract (as for the normalizers in ``speechnorm.norm``):

    y = layer(x)                                   # x: (B, C, T) or (B, C, T, F); time is axis 2
    state = layer.initial_state(batch, device=…, dtype=…)   # named: {"hidden": …}, nested for containers
    y_t, state = layer.step(x_t, state)            # x_t: (B, C) or (B, C, F); pure

A layer with state declares it once in ``state_spec()`` (``speechnorm.state``); ``initial_state``
follows from the declarations of the layer and its children. Scanning ``step`` from
``initial_state`` reproduces ``forward``; that is tested generically for every registered layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from ..state import State, StateSpec, initial_state

EMPTY: State = {}
#: Every streamable layer, by name, with a small example (a builder and an input shape): the
#: contract tests run over this registry, so a new layer is tested by registering it.
LAYERS: Registry = Registry("layer")


def register_layer(name: str, *, example):
    """Class decorator: register a streamable layer; ``example()`` -> (layer, input shape (B, C, T[, F]))."""

    def decorate(cls):
        LAYERS.add(name, (cls, example))
        return cls

    return decorate


class Streamable(nn.Module):
    """Base of every layer here: the state follows from ``state_spec()`` (none by default), and a
    frame-local layer's step is its forward on a one-frame sequence."""

    TIME_AXIS = 2  # of the sequence input; a frame is the sequence without it

    def state_spec(self) -> dict[str, StateSpec]:
        return {}

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        return initial_state(self, batch, device, dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.forward(x_t.unsqueeze(2))[:, :, 0], state  # an index, not squeeze: no If node when exported


@register_layer("pointwise", example=lambda: (Pointwise(6, 5), (2, 6, 7)))
class Pointwise(Streamable):
    """A per-frame linear map of the channels (a 1×1 convolution): (B, C_in, T[, F]) -> (B, C_out, T[, F])."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        last = x.dim() - 1  # a positive axis: the ONNX exporter mistranslates movedim(1, -1)
        return self.linear(x.movedim(1, last)).movedim(last, 1)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        if x_t.dim() == 2:  # (B, C): the linear map itself, no layout changes (fewer ops per hop)
            return self.linear(x_t), state
        return self.forward(x_t), state


@register_layer("activation", example=lambda: (Activation(6), (2, 6, 7)))
class Activation(Streamable):
    """PReLU with one slope per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.act(x_t), state  # per channel on axis 1, whatever the rank


@register_layer("causal_conv1d", example=lambda: (CausalConv1d(4, 5, kernel=3, dilation=2), (2, 4, 9)))
class CausalConv1d(Streamable):
    """Conv over time, causal: (B, C_in, T) -> (B, C_out, T); the state is the last
    ``dilation * (kernel - 1)`` input frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1):
        super().__init__()
        self.context = dilation * (kernel - 1)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (self.context, 0)))

    def state_spec(self) -> dict[str, StateSpec]:
        return {"past": StateSpec(torch.zeros(self.conv.in_channels, self.context), "the last input frames (C_in, context)")}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        window = torch.cat((state["past"], x_t.unsqueeze(2)), dim=2)  # (B, C, context + 1)
        return self.conv(window)[:, :, 0], {"past": window[:, :, 1:]}


@register_layer("causal_conv2d", example=lambda: (CausalConv2d(3, 4, in_freq=9, kernel_time=3, stride_freq=2), (2, 3, 6, 9)))
class CausalConv2d(Streamable):
    """Conv over (time, frequency), causal in time: (B, C_in, T, F) -> (B, C_out, T, F').

    Time is left-padded by ``kernel_time - 1`` frames; the state is the last ``kernel_time - 1``
    input frames, (B, C_in, kernel_time - 1, in_freq). Frequency is zero-padded on both sides and
    may be strided: F' = (in_freq - 1) // stride_freq + 1 for odd ``kernel_freq``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, in_freq: int, kernel_time: int = 2, kernel_freq: int = 3, stride_freq: int = 1
    ):
        super().__init__()
        self.context, self.in_freq = kernel_time - 1, in_freq
        self.out_freq = (in_freq - 1) // stride_freq + 1
        self.conv = nn.Conv2d(
            in_channels, out_channels, (kernel_time, kernel_freq), stride=(1, stride_freq), padding=(0, kernel_freq // 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 0, self.context, 0)))

    def state_spec(self) -> dict[str, StateSpec]:
        past = torch.zeros(self.conv.in_channels, self.context, self.in_freq)
        return {"past": StateSpec(past, "the last input frames (C_in, kernel_time - 1, F)")}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        window = torch.cat((state["past"], x_t.unsqueeze(2)), dim=2)  # (B, C, kernel_time, F)
        return self.conv(window)[:, :, 0], {"past": window[:, :, 1:]}


@register_layer("freq_transposed_conv", example=lambda: (FreqTransposedConv(4, 3), (2, 4, 5, 7)))
class FreqTransposedConv(Streamable):
    """Transposed conv over frequency only (no time context): (B, C_in, T, F) -> (B, C_out, T, 2F - 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_freq: int = 3, stride_freq: int = 2):
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, (1, kernel_freq), stride=(1, stride_freq), padding=(0, kernel_freq // 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


@register_layer("gru", example=lambda: (GRU(5, 6, num_layers=2), (2, 5, 8)))
class GRU(Streamable):
    """A unidirectional GRU over time on (B, C, T) -> (B, hidden, T); the state is the hidden vector."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.gru(x.transpose(1, 2))[0].transpose(1, 2)

    def state_spec(self) -> dict[str, StateSpec]:
        hidden = torch.zeros(self.gru.num_layers, self.gru.hidden_size)
        return {"hidden": StateSpec(hidden, "each GRU layer's hidden vector (layers, B, hidden)", stream_axis=1)}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One frame through each layer's fused GRU cell, with the same weights as ``forward``.

        Traced for export, the module itself runs on a one-frame sequence: one ONNX GRU node."""
        if torch.jit.is_tracing():
            _, hidden_state = self.gru(x_t.unsqueeze(1), state["hidden"])
            return hidden_state[-1], {"hidden": hidden_state}  # the last layer's new state is the output
        hidden = []
        for layer in range(self.gru.num_layers):
            weights = [getattr(self.gru, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            x_t = torch.gru_cell(x_t, state["hidden"][layer], *weights)
            hidden.append(x_t)
        return x_t, {"hidden": torch.stack(hidden)}


@register_layer("lstm", example=lambda: (LSTM(5, 6, num_layers=2), (2, 5, 8)))
class LSTM(Streamable):
    """A unidirectional LSTM over time on (B, C, T) -> (B, hidden, T); the state is (h, c)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x.transpose(1, 2))[0].transpose(1, 2)

    def state_spec(self) -> dict[str, StateSpec]:
        zeros = torch.zeros(self.lstm.num_layers, self.lstm.hidden_size)
        return {"hidden": StateSpec(zeros, "each LSTM layer's hidden vector (layers, B, hidden)", stream_axis=1),
                "cell": StateSpec(zeros, "each LSTM layer's cell vector (layers, B, hidden)", stream_axis=1)}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One frame through each layer's fused LSTM cell, with the same weights as ``forward``.

        Traced for export, the module itself runs on a one-frame sequence: one ONNX LSTM node."""
        if torch.jit.is_tracing():
            out, (h_n, c_n) = self.lstm(x_t.unsqueeze(1), (state["hidden"], state["cell"]))
            return out[:, 0], {"hidden": h_n, "cell": c_n}
        hidden, cell = [], []
        for layer in range(self.lstm.num_layers):
            weights = [getattr(self.lstm, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h_t, c_t = torch.lstm_cell(x_t, (state["hidden"][layer], state["cell"][layer]), *weights)
            hidden.append(h_t)
            cell.append(c_t)
            x_t = h_t
        return x_t, {"hidden": torch.stack(hidden), "cell": torch.stack(cell)}


class SpeakerFiLM(Streamable):
    """Conditions features on a speaker embedding: x · (1 + γ(e)) + β(e) per channel, with γ and β
    one linear map of the embedding e (feature-wise linear modulation, Perez et al. 2018).

    The map starts at zero, so a personalized model warm-started from a plain one begins as that
    model. The embedding is the one state entry that never changes over a stream: a streaming
    runtime sets it when the stream opens (``SpectralEnhancer.initial_state(..., speaker=e)``), and
    the exported step graph carries it as ``state.<path>.embedding``.
    """

    def __init__(self, speaker_dim: int, channels: int):
        super().__init__()
        if speaker_dim < 1:
            raise ValueError(f"speaker_dim must be positive, got {speaker_dim}")
        self.speaker_dim, self.channels = speaker_dim, channels
        self.proj = nn.Linear(speaker_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def condition(self, x: Tensor, embedding: Tensor) -> Tensor:
        """x (B, C) or (B, C, T[, F]), embedding (B, D) -> x's shape."""
        gamma, beta = self.proj(embedding).chunk(2, dim=-1)  # (B, C) each
        view = gamma.shape + (1,) * (x.dim() - 2)
        return x * (1.0 + gamma.reshape(view)) + beta.reshape(view)

    def forward(self, x: Tensor) -> Tensor:
        raise TypeError("SpeakerFiLM needs the speaker embedding: call condition(x, embedding)")

    def state_spec(self) -> dict[str, StateSpec]:
        return {"embedding": StateSpec(torch.zeros(self.speaker_dim),
                                       "the enrolled speaker's embedding (B, D): set when the stream opens, "
                                       "passed through unchanged (`speechnorm enroll`)")}

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.condition(x_t, state["embedding"]), state


class Sequential(Streamable):
    """Streamable layers in a row; the state is each layer's, under its index ({"layers": {"0": …}})."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self._keys = [str(i) for i in range(len(layers))]

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        inner, new = state.get("layers", EMPTY), {}
        for key, layer in zip(self._keys, self.layers):
            x_t, layer_state = layer.step(x_t, inner.get(key, EMPTY))
            if layer_state:
                new[key] = layer_state
        return x_t, ({"layers": new} if new else EMPTY)


class Residual(Streamable):
    """y = x + body(x), for a streamable body; the state is the body's ({"body": …})."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        y_t, body_state = self.body.step(x_t, state.get("body", EMPTY))
        return x_t + y_t, ({"body": body_state} if body_state else EMPTY)


@register_layer("tac", example=lambda: (TAC(6, 5), (2, 3, 6, 7)))
class TAC(Streamable):
    """Transform–average–concatenate across microphones (Luo et al. 2020), per frame.

    Input (B, M, C, T[, F]): a shared transform of each mic's features, the mean of those over
    the mics, a transform of the mean, then each mic's transform concatenated with it and mapped
    back to C, added to the input. One set of weights for any M >= 1; permuting the mics permutes
    the output the same way.
    """

    TIME_AXIS = 3

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(channels, hidden), nn.PReLU())
        self.average = nn.Sequential(nn.Linear(hidden, hidden), nn.PReLU())
        self.concat = nn.Sequential(nn.Linear(2 * hidden, channels), nn.PReLU())

    def forward(self, x: Tensor) -> Tensor:
        last = x.dim() - 1  # positive axes export correctly to ONNX
        features = x.movedim(2, last)  # (B, M, T[, F], C)
        per_mic = self.transform(features)
        shared = self.average(per_mic.mean(dim=1, keepdim=True)).expand_as(per_mic)
        return x + self.concat(torch.cat((per_mic, shared), dim=-1)).movedim(last, 2)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """(B, M, C) or (B, M, C, F) -> the same shape."""
        if x_t.dim() == 4:
            return self.forward(x_t.unsqueeze(3))[:, :, :, 0], state
        per_mic = self.transform(x_t)  # (B, M, H): channels are already last
        shared = self.average(per_mic.mean(dim=1, keepdim=True)).expand_as(per_mic)
        return x_t + self.concat(torch.cat((per_mic, shared), dim=-1)), state
