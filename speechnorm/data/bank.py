"""A bank of generated rooms: made once in batches (``roomgen``), kept as fp16, read per item.

Each room holds one array of ``mics`` microphones (a circle or a line, the seen geometries) and
``sources`` source positions: source 0 is the talker (``distance`` from the array), the others are
noise positions anywhere in the room. Training items draw a room and a random subset and order
of its mics, so one 8-mic bank serves 1-8-mic arrays.

On disk (``folder``): ``bank.json`` (version, sample rate, counts, settings) and one
``chunk-NNNNN.npz`` per ``chunk`` rooms, written atomically. Chunk k is a pure function of
(seed, k), so a stopped build resumes where it stopped and gives the same bank. Each room's
responses are scaled to peak 1 (the scale is kept) and cut where the longest band has decayed
60 dB after the crossfade.

    speechnorm bank --rooms 10000          # .cache/room_bank (minutes on a CPU, seconds on a GPU)
"""

from __future__ import annotations

import json
import os
import struct
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .versioned import read_versioned
from .roomgen import CROSSFADE, SAMPLE_RATE, T60_SHAPE, generate, random_rooms

BANK_VERSION = 1


class BankError(ValueError):
    """A bank that cannot be used; the message names the file or setting."""


@dataclass(frozen=True)
class BankSettings:
    """What a bank's rooms are drawn from (``roomgen.random_rooms``)."""

    rooms: int = 10_000
    mics: int = 8
    sources: int = 4
    t60: tuple[float, float] = (0.15, 1.0)
    distance: tuple[float, float] = (0.5, 3.0)
    seed: int = 0
    chunk: int = 32
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self):
        if self.rooms < 1:
            raise BankError(f"a bank needs at least one room, got rooms={self.rooms}")
        if not 1 <= self.mics <= 16 or not 1 <= self.sources <= 8:
            raise BankError(f"mics must be within [1, 16] and sources within [1, 8], got {self.mics}, {self.sources}")
        if not 0.05 <= self.t60[0] <= self.t60[1] <= 3.0:
            raise BankError(f"t60 must be (low, high) within [0.05, 3] s, got {self.t60}")
        if self.sample_rate != SAMPLE_RATE:
            raise BankError(f"banks are made at {SAMPLE_RATE} Hz, got sample_rate={self.sample_rate}")


def _chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index:05d}.npz"


def build(folder: str | Path, settings: BankSettings = BankSettings(), device: str | torch.device = "cpu",
          progress=None) -> "RoomBank":
    """Make (or finish) the bank of ``settings`` in ``folder`` on ``device``; returns it opened.
    A folder holding a bank of other settings is refused rather than mixed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"version": BANK_VERSION, "settings": asdict(settings), "crossfade": list(CROSSFADE),
            "t60_shape": [list(x) for x in T60_SHAPE]}
    meta_path = folder / "bank.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != json.loads(json.dumps(meta)):
            raise BankError(f"{meta_path} describes another bank ({old.get('settings')}); choose another folder "
                            "or delete it")
    else:
        meta_path.write_text(json.dumps(meta, indent=1))
    chunks = -(-settings.rooms // settings.chunk)
    started = time.time()
    for index in range(chunks):
        path = _chunk_path(folder, index)
        if path.exists():
            continue
        count = min(settings.chunk, settings.rooms - index * settings.chunk)
        _write_chunk(path, settings, index, count, device)
        if progress is not None:
            progress(f"bank: {index + 1}/{chunks} chunks ({time.time() - started:.0f} s)")
    return RoomBank(folder)


def _write_chunk(path: Path, settings: BankSettings, index: int, count: int, device) -> None:
    rng = np.random.default_rng([settings.seed, index])
    rooms = random_rooms(rng, count, mics=settings.mics, sources=settings.sources, t60=settings.t60,
                         distance=settings.distance).to(device)
    generator = torch.Generator(device=device).manual_seed(int(rng.integers(1 << 62)))
    out = generate(rooms, generator)
    rir = out.rir
    # cut each room where its longest band has decayed 60 dB after the crossfade
    longest = max(r for _, r in T60_SHAPE)
    ends = (out.direct.amax(dim=(1, 2)) + CROSSFADE[1] * SAMPLE_RATE + longest * rooms.t60 * SAMPLE_RATE).ceil().long()
    ends = ends.clamp(max=rir.shape[-1]).cpu()
    scale = rir.abs().amax(dim=(1, 2, 3)).clamp(min=1e-12)
    rir = (rir / scale[:, None, None, None]).half().cpu().numpy()
    lengths = ends.numpy().astype(np.int64)
    flat = np.concatenate([rir[b, :, :, : lengths[b]].reshape(-1) for b in range(count)])
    offsets = np.concatenate([[0], np.cumsum(lengths * settings.sources * settings.mics)[:-1]])
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, rir=flat, offsets=offsets, lengths=lengths, direct=out.direct.cpu().numpy().astype(np.float32),
             scale=scale.cpu().numpy().astype(np.float32), t60=rooms.t60.cpu().numpy(), size=rooms.size.cpu().numpy(),
             mics=rooms.mics.cpu().numpy(), sources=rooms.sources.cpu().numpy())
    os.replace(tmp, path)


def _mapped(path: Path, name: str) -> np.ndarray:
    """The array ``name`` of an uncompressed .npz, memory-mapped where it lies inside the file
    (``np.load(mmap_mode=...)`` maps plain .npy files only and reads an .npz member whole)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise BankError(f"{path}: {name} is compressed; a bank chunk is written uncompressed")
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(handle)
        offset = handle.tell()
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class RoomBank:
    """A built bank, opened for reading: ``fetch(rooms, mics)`` gives float32 responses.

    The responses are memory-mapped inside the chunks (a 10,000-room bank is 7.6 GB): a fetch reads
    its rooms' pages only. On a GPU, ``to(device)`` loads the whole bank there once."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        meta = read_versioned(folder / "bank.json", BANK_VERSION, BankError, "room bank",
                              f"build one with `speechnorm bank --out {folder}`", "rebuild it")
        self.settings = BankSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["settings"].items()})
        self.folder, self.device = folder, torch.device("cpu")
        count = -(-self.settings.rooms // self.settings.chunk)
        missing = [i for i in range(count) if not _chunk_path(folder, i).exists()]
        if missing:
            raise BankError(f"{folder}: {len(missing)} of {count} chunks missing (first: {_chunk_path(folder, missing[0]).name});"
                            " finish it with the same `speechnorm bank` command")
        self._chunks = []
        for i in range(count):
            try:
                self._chunks.append(np.load(_chunk_path(folder, i)))  # an NpzFile: members read when asked
            except (OSError, ValueError) as err:
                raise BankError(f"{_chunk_path(folder, i)}: cannot be read ({err}); delete it and rerun the build") from None
        self.direct = torch.from_numpy(np.concatenate([c["direct"] for c in self._chunks]))  # (R, S, M)
        self.t60 = torch.from_numpy(np.concatenate([c["t60"] for c in self._chunks]))
        self.lengths = torch.from_numpy(np.concatenate([c["lengths"] for c in self._chunks]))
        try:  # read per room when fetched, not whole
            self._flat = [_mapped(_chunk_path(folder, i), "rir") for i in range(count)]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, struct.error) as err:
            raise BankError(f"{folder}: a chunk's responses cannot be mapped ({err}); delete it and rerun the build") from None
        self._offsets = [c["offsets"] for c in self._chunks]
        self._device_rirs: Tensor | None = None

    def __len__(self) -> int:
        return self.settings.rooms

    def to(self, device) -> "RoomBank":
        """Load every response onto ``device`` (one fp16 tensor), for a batched loop there."""
        device = torch.device(device)
        if device.type != "cpu":
            self._device_rirs = torch.cat([torch.from_numpy(np.asarray(f)) for f in self._flat]).to(device)
            self._device_offsets = torch.from_numpy(np.concatenate(
                [o + sum(len(f) for f in self._flat[:i]) for i, o in enumerate(self._offsets)])).to(device)
            self.direct, self.t60, self.lengths = self.direct.to(device), self.t60.to(device), self.lengths.to(device)
        self.device = device
        return self

    def useful_lengths(self, rooms: Tensor, decay_db: float = 48.0) -> Tensor:
        """(B,) samples that hold ``rooms``' responses down to ``decay_db`` of decay after the
        crossfade in their slowest band. What is cut lies that far below the late energy, which is
        itself below the direct sound: under the recipes' sensor noise (40-70 dB below the speech)."""
        rooms = torch.as_tensor(rooms).long().to(self.lengths.device)
        longest = max(r for _, r in T60_SHAPE)
        ends = (self.direct[rooms].amax(dim=(1, 2)) + CROSSFADE[1] * SAMPLE_RATE
                + decay_db / 60 * longest * self.t60[rooms] * SAMPLE_RATE).ceil().long()
        return torch.minimum(ends, self.lengths[rooms])

    def fetch(self, rooms: Tensor, mics: Tensor, length: int | None = None) -> Tensor:
        """(B, S, M', L) float32 responses of ``rooms`` (B,) at the mics ``mics`` (B, M') (indices into
        each room's array, in that order), cut or zero-padded to ``length`` (default: the longest)."""
        rooms, mics = torch.as_tensor(rooms).long(), torch.as_tensor(mics).long()
        if rooms.ndim != 1 or mics.ndim != 2 or mics.shape[0] != rooms.shape[0]:
            raise BankError(f"fetch takes rooms (B,) and mics (B, M), got {tuple(rooms.shape)} and {tuple(mics.shape)}")
        if len(rooms) and (rooms.min() < 0 or rooms.max() >= len(self)):
            raise BankError(f"room indices must be within [0, {len(self)}), got {rooms.min().item()}..{rooms.max().item()}")
        if mics.numel() and (mics.min() < 0 or mics.max() >= self.settings.mics):
            raise BankError(f"mic indices must be within [0, {self.settings.mics}) for this bank")
        sources, all_mics = self.settings.sources, self.settings.mics
        lengths = self.lengths[rooms.to(self.lengths.device)]
        length = int(lengths.max()) if length is None else length
        if self._device_rirs is not None:  # gather on the device in one go
            rooms_d, mics_d = rooms.to(self.device), mics.to(self.device)
            base = self._device_offsets[rooms_d]  # (B,)
            s = torch.arange(sources, device=self.device)[None, :, None, None]
            m = mics_d[:, None, :, None]
            t = torch.arange(length, device=self.device)[None, None, None, :]
            room_len = lengths[:, None, None, None]
            index = base[:, None, None, None] + (s * all_mics + m) * room_len + t.clamp(max=room_len - 1)
            return (self._device_rirs[index].float() * (t < room_len))
        out = torch.zeros(len(rooms), sources, mics.shape[1], length)
        chunk = self.settings.chunk
        for b, (room, picks) in enumerate(zip(rooms.tolist(), mics.tolist())):
            c, r = divmod(room, chunk)
            size = int(self.lengths[room])
            start = int(self._offsets[c][r])
            block = np.asarray(self._flat[c][start : start + sources * all_mics * size]).reshape(sources, all_mics, size)
            keep = min(size, length)
            out[b, :, :, :keep] = torch.from_numpy(block[:, picks, :keep].astype(np.float32))
        return out
