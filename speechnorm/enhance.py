"""``speechnorm enhance IN -o OUT``: a multi-channel recording in, the enhanced reference mic out.

The file is streamed block by block through ``StreamingEnhancer`` at the file's own sample rate
(``AtRate`` resamples in and out), so memory stays constant however long it is. ``offline=True``
runs the whole-utterance path instead (the offline ONNX graph, or the PyTorch forward); the two
agree to float rounding. The output has the input's length, rate and (where the output format
allows it) sample format; it is written to a temporary file and renamed only when complete.

A personalized model needs the target speaker: ``enroll`` is either their enrollment audio (2-30 s
of them alone, embedded by ``speechnorm.speaker``) or an embedding saved by ``speechnorm enroll``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from .data.resample import resample
from .stream import AtRate, StreamingEnhancer, load

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "tac_gru_online_small_v2"
# what ``enhance --enroll`` uses when no model is named: the released personalized model
DEFAULT_PERSONALIZED_MODEL = REPO / "models" / "tac_gru_online_small_personalized_v2"
BLOCK_SECONDS = 1.0


class EnhanceError(ValueError):
    """Input that cannot be enhanced, with the file named in the message."""


def default_model(personalized: bool = False) -> Path:
    """The model used when none is named: ``SPEECHNORM_MODEL`` or the default release; with an
    enrollment, ``SPEECHNORM_PERSONALIZED_MODEL`` or the released personalized model."""
    if personalized:
        return Path(os.environ.get("SPEECHNORM_PERSONALIZED_MODEL", DEFAULT_PERSONALIZED_MODEL))
    return Path(os.environ.get("SPEECHNORM_MODEL", DEFAULT_MODEL))


def open_input(path: Path, max_mics: int) -> sf.SoundFile:
    if not path.is_file():
        raise EnhanceError(f"{path}: no such file")
    try:
        source = sf.SoundFile(str(path))
    except Exception as err:
        raise EnhanceError(f"{path}: cannot read audio ({str(err).splitlines()[0]})") from None
    if source.frames == 0:
        source.close()
        raise EnhanceError(f"{path}: empty (0 samples)")
    if not 1 <= source.channels <= max_mics:
        source.close()
        raise EnhanceError(f"{path}: {source.channels} channels, but the model takes 1 to {max_mics} microphones")
    if not 8000 <= source.samplerate <= 192_000:
        source.close()
        raise EnhanceError(f"{path}: sample rate {source.samplerate} Hz is outside 8000–192000 Hz")
    return source


def output_subtype(source: sf.SoundFile, out: Path) -> str | None:
    """The input's sample format where the output's container supports it, else its default."""
    fmt = _format_for(out)
    return source.subtype if fmt and sf.check_format(fmt, source.subtype) else None


def _format_for(out: Path) -> str | None:
    suffix = out.suffix.lstrip(".").upper()
    return suffix if suffix in sf.available_formats() else None


def speaker_embedding(enroll: str | Path) -> np.ndarray:
    """The embedding of ``enroll``: a ``.npy`` from ``speechnorm enroll``, or enrollment audio."""
    enroll = Path(enroll)
    if not enroll.is_file():
        raise EnhanceError(f"{enroll}: no such enrollment file (audio of the target speaker, or a .npy embedding)")
    if enroll.suffix == ".npy":
        try:
            return np.load(enroll, allow_pickle=False)
        except Exception as err:
            raise EnhanceError(f"{enroll}: not a readable embedding ({str(err).splitlines()[0]})") from None
    from .speaker import EnrollmentError, embed_file

    try:
        return embed_file(enroll)[0]
    except EnrollmentError as err:
        raise EnhanceError(f"{enroll}: {err}") from None
    except Exception as err:  # unreadable audio
        raise EnhanceError(f"{enroll}: cannot read enrollment audio ({str(err).splitlines()[0]})") from None


def enhance_file(src: str | Path, dst: str | Path, model: str | Path | None = None, backend: str = "auto",
                 offline: bool = False, progress: bool | None = None, enroll: str | Path | None = None) -> dict:
    """Enhance ``src`` into ``dst``; returns what was done (samples, rate, mics, model). ``enroll``:
    the target speaker, for a personalized model (enrollment audio or a ``.npy`` embedding)."""
    src, dst = Path(src), Path(dst)
    if _format_for(dst) is None:
        raise EnhanceError(f"{dst}: unknown output format {dst.suffix!r}; use .wav or .flac")
    loaded = load(model or default_model(personalized=enroll is not None), backend=backend)
    speaker = None if enroll is None else speaker_embedding(enroll)
    try:
        speaker = loaded.check_speaker(speaker)
    except ValueError as err:
        hint = " (give --enroll ME.wav or me.npy)" if speaker is None else ""
        raise EnhanceError(f"{getattr(loaded, 'path', loaded.name)}: {err}{hint}") from None
    with open_input(src, loaded.max_mics) as source:
        rate, mics, frames = source.samplerate, source.channels, source.frames
        partial = dst.with_name(f".{dst.name}.partial")
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            with sf.SoundFile(str(partial), "w", rate, 1, output_subtype(source, dst), format=_format_for(dst)) as sink:
                if offline:
                    sink.write(_offline(loaded, source, src, speaker))
                else:
                    _streamed(loaded, source, sink, src, progress, speaker)
            partial.replace(dst)
        finally:
            partial.unlink(missing_ok=True)
    return {"input": str(src), "output": str(dst), "samples": frames, "sample_rate": rate, "mics": mics,
            "model": str(getattr(loaded, "path", "")), "backend": type(loaded).__name__, "offline": offline,
            "personalized": speaker is not None}


def _blocks(source: sf.SoundFile, src: Path, block: int):
    position = 0
    while True:
        try:
            data = source.read(block, dtype="float32", always_2d=True)
        except Exception as err:  # a truncated or corrupt body
            raise EnhanceError(f"{src}: cannot read past sample {position} ({str(err).splitlines()[0]})") from None
        if data.shape[0] == 0:
            return
        yield position, np.ascontiguousarray(data.T)
        position += data.shape[0]


def _streamed(loaded, source: sf.SoundFile, sink: sf.SoundFile, src: Path, progress: bool | None, speaker=None) -> None:
    engine = AtRate(StreamingEnhancer(loaded, source.channels, speaker=speaker), source.samplerate)
    block = int(BLOCK_SECONDS * source.samplerate)
    bar = _progress(source, progress)
    for position, chunk in _blocks(source, src, block):
        try:
            sink.write(engine.process(chunk))
        except ValueError as err:
            raise EnhanceError(f"{src}: samples {position}–{position + chunk.shape[1]}: {err}") from None
        if bar is not None:
            bar.update(chunk.shape[1] / source.samplerate)
    sink.write(engine.flush())
    if bar is not None:
        bar.close()


def _offline(loaded, source: sf.SoundFile, src: Path, speaker=None) -> np.ndarray:
    audio = np.concatenate([chunk for _, chunk in _blocks(source, src, source.frames)], axis=1)
    try:
        StreamingEnhancer(loaded, source.channels, speaker=speaker).check(audio)
    except ValueError as err:
        raise EnhanceError(f"{src}: {err}") from None
    at_model = resample(audio, source.samplerate, loaded.sample_rate)
    count, hop, delay = at_model.shape[1], loaded.hop, loaded.delay_samples
    padded = -(-(count + delay) // hop) * hop  # room for the delayed tail, a whole number of hops
    enhanced = loaded.offline(np.pad(at_model, ((0, 0), (0, padded - count))), speaker=speaker)[delay : delay + count]
    out = resample(enhanced[None], loaded.sample_rate, source.samplerate)[0]
    return np.pad(out, (0, max(0, source.frames - out.size)))[: source.frames]


def _progress(source: sf.SoundFile, progress: bool | None):
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=round(source.frames / source.samplerate, 2), unit="s", desc="enhance",
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")


def score_against(noisy: str | Path, enhanced: str | Path, clean: str | Path) -> dict:
    """SI-SDR, wide-band PESQ and STOI of the noisy reference mic and of the enhanced file against
    ``clean`` (all at the clean file's rate, cut to the shortest)."""
    import torch

    from .data.audio_io import read_audio
    from .scoring import quality_metrics

    reference, rate = read_audio(clean, check_clipping=False)
    signals = {"noisy": read_audio(noisy, rate, check_clipping=False)[0][0],
               "enhanced": read_audio(enhanced, rate, check_clipping=False)[0][0]}
    length = min(reference.shape[-1], *(s.shape[-1] for s in signals.values()))
    if rate not in (8000, 16000):  # PESQ's rates
        raise EnhanceError(f"{clean}: scoring needs a 16 kHz (or 8 kHz) reference, got {rate} Hz")
    return {who: quality_metrics(s[:length].to(torch.float32), reference[0, :length], rate) for who, s in signals.items()}
