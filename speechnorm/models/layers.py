"""Streamable building blocks: every layer here runs on a whole sequence and one frame at a time.

The contract (as for the normalizers in ``speechnorm.norm``):

    y = layer(x)                                   # x: (B, C, T) or (B, C, T, F); time is axis 2
    state = layer.initial_state(batch, device=…, dtype=…)   # flat tuple of tensors
    y_t, state = layer.step(x_t, state)            # x_t: (B, C) or (B, C, F); pure

Scanning ``step`` from ``initial_state`` reproduces ``forward``; that is tested generically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


State = tuple[Tensor, ...]


class Streamable(nn.Module):
    """Base of the stateless, frame-local layers: step = forward on a one-frame sequence."""

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        return ()

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.forward(x_t.unsqueeze(2)).squeeze(2), state


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


class Activation(Streamable):
    """PReLU with one slope per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        return self.act(x_t), state  # per channel on axis 1, whatever the rank


class CausalConv1d(nn.Module):
    """Conv over time, causal: (B, C_in, T) -> (B, C_out, T); the state is the last
    ``dilation * (kernel - 1)`` input frames."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, dilation: int = 1):
        super().__init__()
        self.context = dilation * (kernel - 1)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (self.context, 0)))

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        return (torch.zeros(batch, self.conv.in_channels, self.context, device=device, dtype=dtype or torch.float32),)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        window = torch.cat((state[0], x_t.unsqueeze(2)), dim=2)  # (B, C, context + 1)
        return self.conv(window).squeeze(2), (window[:, :, 1:],)


class CausalConv2d(nn.Module):
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

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        shape = (batch, self.conv.in_channels, self.context, self.in_freq)
        return (torch.zeros(shape, device=device, dtype=dtype or torch.float32),)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        (past,) = state
        window = torch.cat((past, x_t.unsqueeze(2)), dim=2)  # (B, C, kernel_time, F)
        return self.conv(window).squeeze(2), (window[:, :, 1:],)


class FreqTransposedConv(Streamable):
    """Transposed conv over frequency only (no time context): (B, C_in, T, F) -> (B, C_out, T, 2F - 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_freq: int = 3, stride_freq: int = 2):
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            in_channels, out_channels, (1, kernel_freq), stride=(1, stride_freq), padding=(0, kernel_freq // 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class GRU(nn.Module):
    """A unidirectional GRU over time on (B, C, T) -> (B, hidden, T); the state is the hidden vector."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.gru(x.transpose(1, 2))[0].transpose(1, 2)

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        shape = (self.gru.num_layers, batch, self.gru.hidden_size)
        return (torch.zeros(shape, device=device, dtype=dtype or torch.float32),)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One frame through each layer's fused GRU cell, with the same weights as ``forward``.

        Traced for export, the module itself runs on a one-frame sequence: one ONNX GRU node."""
        if torch.jit.is_tracing():
            _, hidden_state = self.gru(x_t.unsqueeze(1), state[0])
            return hidden_state[-1], (hidden_state,)  # the last layer's new state is the output
        hidden = []
        for layer in range(self.gru.num_layers):
            weights = [getattr(self.gru, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            x_t = torch.gru_cell(x_t, state[0][layer], *weights)
            hidden.append(x_t)
        return x_t, (torch.stack(hidden),)


class LSTM(nn.Module):
    """A unidirectional LSTM over time on (B, C, T) -> (B, hidden, T); the state is (h, c)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.lstm(x.transpose(1, 2))[0].transpose(1, 2)

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        shape = (self.lstm.num_layers, batch, self.lstm.hidden_size)
        return tuple(torch.zeros(shape, device=device, dtype=dtype or torch.float32) for _ in range(2))

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One frame through each layer's fused LSTM cell, with the same weights as ``forward``.

        Traced for export, the module itself runs on a one-frame sequence: one ONNX LSTM node."""
        if torch.jit.is_tracing():
            out, (h_n, c_n) = self.lstm(x_t.unsqueeze(1), (state[0], state[1]))
            return out.squeeze(1), (h_n, c_n)
        hidden, cell = [], []
        for layer in range(self.lstm.num_layers):
            weights = [getattr(self.lstm, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h_t, c_t = torch.lstm_cell(x_t, (state[0][layer], state[1][layer]), *weights)
            hidden.append(h_t)
            cell.append(c_t)
            x_t = h_t
        return x_t, (torch.stack(hidden), torch.stack(cell))


class Sequential(nn.Module):
    """Streamable layers in a row; the state is the concatenation of the children's states."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        return tuple(s for layer in self.layers for s in layer.initial_state(batch, device=device, dtype=dtype))

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        new_state: list[Tensor] = []
        for layer, layer_state in zip(self.layers, split_state(state, list(self.layers))):
            x_t, layer_state = layer.step(x_t, layer_state)
            new_state.extend(layer_state)
        return x_t, tuple(new_state)


def state_size(layer: nn.Module) -> int:
    """How many tensors the layer's state holds (fixed per layer, independent of the batch)."""
    return len(layer.initial_state(1))


class Residual(nn.Module):
    """y = x + body(x), for a streamable body."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)

    def initial_state(self, batch: int, device=None, dtype=None) -> State:
        return self.body.initial_state(batch, device=device, dtype=dtype)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        y_t, state = self.body.step(x_t, state)
        return x_t + y_t, state


def split_state(state: State, layers: list[nn.Module]) -> list[State]:
    """Cut a concatenated state into each layer's part, in order."""
    parts = []
    for layer in layers:
        count = state_size(layer)
        parts.append(tuple(state[:count]))
        state = state[count:]
    if state:
        raise ValueError(f"state has {len(state)} tensors more than the layers take")
    return parts


class TAC(Streamable):
    """Transform–average–concatenate across microphones (Luo et al. 2020), per frame.

    Input (B, M, C, T[, F]): a shared transform of each mic's features, the mean of those over
    the mics, a transform of the mean, then each mic's transform concatenated with it and mapped
    back to C, added to the input. One set of weights for any M >= 1; permuting the mics permutes
    the output the same way.
    """

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
            return self.forward(x_t.unsqueeze(3)).squeeze(3), state
        per_mic = self.transform(x_t)  # (B, M, H): channels are already last
        shared = self.average(per_mic.mean(dim=1, keepdim=True)).expand_as(per_mic)
        return x_t + self.concat(torch.cat((per_mic, shared), dim=-1)), state
