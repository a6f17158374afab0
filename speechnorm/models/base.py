"""What every enhancement model shares: audio in, audio out, offline or one hop at a time.

    enhanced = model(audio)                       # audio (B, M, N) float32, N a multiple of hop
    state = model.initial_state(batch, mics=M)    # named, nested like the module tree
    out_hop, state = model.step(hop_audio, state) # hop_audio (B, M, hop) -> (B, hop)

The state is what the layers declare (``speechnorm.state``), by module path. Parts of the model
run once per mic (``PER_MIC``: the STFT's analysis buffer, the per-mic encoder): their states hold
B·M streams, which is the mic axis of the exported graph; the rest hold B.

A *personalized* model (``speaker_dim`` > 0) also takes the target speaker's embedding
(``speechnorm.speaker``, from enrollment audio): ``model(audio, speaker=e)`` with e (B, D) or
(D,), and ``model.initial_state(batch, mics=M, speaker=e)``, which stores it in the state
(``speaker.embedding``) so that ``step`` needs nothing more. Without one it raises; a plain
model given one raises too.

The models here are spectral maskers: the causal STFT (``speechnorm.dsp``) of every mic,
per-mic features, a network that sees all mics and returns a complex ratio mask, the mask
applied to the reference mic (mic 0), and overlap-add synthesis. The output lags the input by
``delay_samples`` (the STFT's n_fft - hop) in ``forward`` and ``step`` alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..dsp import STFT
from ..graph_io import wants_speaker
from ..norm import NotStreamableError
from ..state import State, StateSpec, flatten, specs, unflatten

SAMPLE_RATE = 16_000
EPS = 1e-8


def spectral_features(spectrum: Tensor) -> Tensor:
    """(B, M, 2, *rest) spectra -> (B, M, 3, *rest) features per mic and bin.

    The log power of each mic, and the cosine and sine of its phase relative to the reference
    mic (mic 0): magnitude for what is there, relative phase for where it comes from. Relative
    quantities keep the model independent of the array's geometry and absolute phase.
    """
    re, im = spectrum[:, :, 0], spectrum[:, :, 1]
    power = re.square() + im.square()
    ref_re, ref_im = re[:, :1], im[:, :1]
    cross_re = re * ref_re + im * ref_im  # X_m · conj(X_0)
    cross_im = im * ref_re - re * ref_im
    scale = torch.rsqrt(power * power[:, :1] + EPS)
    return torch.stack((torch.log(power + EPS), cross_re * scale, cross_im * scale), dim=2)


def apply_mask(mask: Tensor, spectrum: Tensor) -> Tensor:
    """Complex multiplication of (B, 2, *rest) mask and spectrum."""
    m_re, m_im = mask[:, 0], mask[:, 1]
    x_re, x_im = spectrum[:, 0], spectrum[:, 1]
    return torch.stack((m_re * x_re - m_im * x_im, m_re * x_im + m_im * x_re), dim=1)


def bounded_mask(raw: Tensor) -> Tensor:
    """Complex ratio mask with each component in (-2, 2)."""
    return 2.0 * torch.tanh(0.5 * raw)


class SpectralEnhancer(nn.Module):
    """Base class: the STFT around a mask network. Subclasses implement ``mask`` (a sequence) and
    ``mask_step`` (one frame); the state follows from their layers' declarations."""

    sample_rate = SAMPLE_RATE
    #: Module paths (prefixes) whose state is per mic: B·M streams.
    PER_MIC: tuple[str, ...] = ("stft.buffer", "encoder")
    #: The state entry holding a personalized model's speaker embedding (its ``speaker`` module).
    SPEAKER_STATE = "speaker.embedding"
    #: The size of the speaker embedding a personalized model takes; 0: not personalized.
    speaker_dim: int = 0

    def __init__(self, norm: str, n_fft: int = 320, hop: int = 160):
        super().__init__()
        self.norm = norm
        self.stft = STFT(n_fft, hop)

    @property
    def hop(self) -> int:
        return self.stft.hop

    @property
    def delay_samples(self) -> int:
        """The output lags the input by this many samples (forward and step alike)."""
        return self.stft.delay

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency: a hop of buffering plus the delay (= the window, 20 ms by default)."""
        return self.stft.delay + self.stft.hop

    @property
    def latency_ms(self) -> float:
        return 1000.0 * self.latency_samples / self.sample_rate

    @property
    def delay_ms(self) -> float:
        return 1000.0 * self.delay_samples / self.sample_rate

    def _check_audio(self, audio: Tensor, *, hop_only: bool = False) -> None:
        name = type(self).__name__
        if not isinstance(audio, Tensor) or audio.dim() != 3 or audio.shape[1] < 1:
            shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
            raise ValueError(f"{name} expects audio of shape (B, M, N) with M >= 1 mics, got {shape}; "
                             "add batch and mic axes, e.g. x[None, None] for one mono signal")
        if hop_only and audio.shape[-1] != self.hop:
            raise ValueError(f"{name}.step expects one hop of {self.hop} samples per mic, got {audio.shape[-1]}")
        if audio.shape[-1] == 0 or audio.shape[-1] % self.hop:
            raise ValueError(f"{name} needs a positive multiple of the hop ({self.hop} samples), got N = {audio.shape[-1]}; "
                             "pad the end with zeros")
        if not audio.is_floating_point():
            raise ValueError(f"{name} expects floating-point audio, got {audio.dtype}")

    @property
    def personalized(self) -> bool:
        return self.speaker_dim > 0

    def check_speaker(self, speaker, batch: int, device=None, dtype=None) -> Tensor | None:
        """The speaker embedding as (B, D) (a (D,) one is shared by the batch), or None for a plain
        model; a ValueError that says what is wrong otherwise."""
        name = type(self).__name__
        if not wants_speaker(name, self.speaker_dim, speaker):
            return None
        speaker = torch.as_tensor(speaker, device=device, dtype=dtype or torch.float32)
        if speaker.dim() == 1:
            speaker = speaker.expand(batch, -1)
        if tuple(speaker.shape) != (batch, self.speaker_dim):
            raise ValueError(f"{name} takes a speaker embedding of {self.speaker_dim} values (or one per stream, "
                             f"({batch}, {self.speaker_dim})), got shape {tuple(speaker.shape)}")
        if not bool(torch.isfinite(speaker).all()):
            raise ValueError(f"{name}: the speaker embedding contains NaN or inf")
        return speaker

    def forward(self, audio: Tensor, speaker: Tensor | None = None) -> Tensor:
        """(B, M, N) -> (B, N), the enhanced reference mic delayed by ``delay_samples``.
        ``speaker``: the target's embedding, (B, D) or (D,), for a personalized model only."""
        self._check_audio(audio)
        speaker = self.check_speaker(speaker, audio.shape[0], audio.device, audio.dtype)
        spectrum = self.stft.analysis(audio)  # (B, M, 2, T, F)
        mask = self.mask(spectrum) if speaker is None else self.mask(spectrum, speaker)
        return self.stft.synthesis(apply_mask(mask, spectrum[:, 0]))

    def per_mic(self, path: str) -> bool:
        return any(path == prefix or path.startswith(prefix + ".") for prefix in self.PER_MIC)

    def state_layout(self) -> dict[str, tuple[StateSpec, bool]]:
        """Every state tensor by path: its spec and whether it is per mic (the layers' declarations)."""
        try:
            declared = specs(self)
        except NotStreamableError as err:
            raise NotStreamableError(
                f"{type(self).__name__} built with norm={self.norm!r} cannot stream ({err}); "
                "build it with a causal normalizer such as 'online', or call .eval() for 'batch'"
            ) from None
        return {path: (spec, self.per_mic(path)) for path, (_, spec) in declared.items()}

    def check_state(self, state: State, batch: int, mics: int) -> None:
        """Raise a ValueError naming the entry where ``state`` differs from the declared layout."""
        layout, got = self.state_layout(), flatten(state)
        if got.keys() != layout.keys():
            raise ValueError(f"{type(self).__name__}: state entries {sorted(got.keys() ^ layout.keys())} are "
                             "not both declared and present")
        for path, (spec, per_mic) in layout.items():
            expected = spec.shape(batch * mics if per_mic else batch)
            if tuple(got[path].shape) != expected:
                raise ValueError(f"{type(self).__name__}: state '{path}' has shape {tuple(got[path].shape)}, "
                                 f"declared {expected} for {batch} stream(s) of {mics} mic(s)")

    def initial_state(self, batch: int, mics: int = 1, device=None, dtype=None, speaker=None) -> State:
        """The state before the first hop, for ``batch`` streams of ``mics`` mics; a personalized
        model's holds ``speaker`` ((B, D) or (D,), required), which every step then uses."""
        speaker = self.check_speaker(speaker, batch, device, dtype)
        flat = {path: spec.make(batch * mics if per_mic else batch, device, dtype)
                for path, (spec, per_mic) in self.state_layout().items()}
        if speaker is not None:
            flat[self.SPEAKER_STATE] = speaker.clone()
        return unflatten(flat)

    def step(self, hop_audio: Tensor, state: State) -> tuple[Tensor, State]:
        """(B, M, hop) -> ((B, hop), new state). Pure: the module is not changed."""
        self._check_audio(hop_audio, hop_only=True)
        batch, mics = hop_audio.shape[:2]
        stft = state["stft"]
        if stft["buffer"].shape[0] != batch * mics:
            raise ValueError(f"state was made for {stft['buffer'].shape[0]} (batch x mics) streams, got audio for "
                             f"(B, M) = ({batch}, {mics})")
        frame, buffer = self.stft.analysis_step(hop_audio.flatten(0, 1), stft["buffer"])  # (B·M, 2, F)
        frame = frame.unflatten(0, (batch, -1))  # (B, M, 2, F); -1: the mic count stays dynamic when traced
        mask, network = self.mask_step(frame, state, batch)
        out, tail = self.stft.synthesis_step(apply_mask(mask, frame[:, 0]), stft["tail"])
        return out, {"stft": {"buffer": buffer, "tail": tail}, **network}

    # subclasses ------------------------------------------------------------
    def mask(self, spectrum: Tensor) -> Tensor:
        """(B, M, 2, T, F) -> complex mask (B, 2, T, F). A personalized model's takes the speaker
        embedding (B, D) as a second argument."""
        raise NotImplementedError

    def mask_step(self, frame: Tensor, state: State, batch: int) -> tuple[Tensor, State]:
        """(B, M, 2, F) and the model's state -> ((B, 2, F), the new state of the network's modules).

        ``batch`` is B, read from the step's input audio: when the step is traced for export, sizes
        read from ``frame`` (a computed tensor) would be frozen to the example's, sizes read from
        the input stay dynamic (the batched step graph's stream axis)."""
        raise NotImplementedError


class FlatStep(nn.Module):
    """``model.step`` with the state as flat tensors in the order of ``paths``, for tracing
    (TorchScript, ONNX export). ``single``: one stream without a batch axis, audio (M, hop) ->
    (hop,), as the exported step graph takes it."""

    def __init__(self, model: SpectralEnhancer, paths: list[str], single: bool = False):
        super().__init__()
        self.model, self.paths, self.single = model, paths, single

    def forward(self, audio: Tensor, *state: Tensor):
        out, new_state = self.model.step(audio.unsqueeze(0) if self.single else audio,
                                         unflatten(dict(zip(self.paths, state))))
        new_state = flatten(new_state)
        return (out[0] if self.single else out, *(new_state[path] for path in self.paths))
