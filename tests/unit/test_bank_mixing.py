"""The room bank, the signal pools and items mixed on the fly: against direct convolutions (numpy),
known signals, purity (an item is the same alone or in a batch), and bad input."""

import json

import numpy as np
import pytest
import torch

from speechnorm.data.bank import BankError, BankSettings, RoomBank, build
from speechnorm.data.mixing import BankMixSpec, BankMixtures, draw_plans, mix
from speechnorm.data.pool import SignalPool
from speechnorm.data.roomgen import generate, random_rooms

FS = 16_000


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bank")
    return build(folder, BankSettings(rooms=6, mics=4, sources=3, t60=(0.2, 0.4), chunk=4, seed=3))


def _pools(seed=0):
    rng = np.random.default_rng(seed)
    speech = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in (20000, 30000, 9000, 26000)]
    noise = [torch.from_numpy(rng.standard_normal(n).astype(np.float32)) for n in (7000, 40000)]
    return (SignalPool.from_arrays(speech, ["a", "a", "b", "c"]), SignalPool.from_arrays(noise, ["recorded", "generated"]))


def test_bank_holds_the_generator_rooms_at_any_mic_subset(bank):
    """Chunk k is a function of (seed, k): regenerate chunk 1 and compare through ``fetch``."""
    rng = np.random.default_rng([3, 1])
    rooms = random_rooms(rng, 2, mics=4, sources=3, t60=(0.2, 0.4), distance=(0.5, 3.0))
    fresh = generate(rooms, torch.Generator().manual_seed(int(rng.integers(1 << 62))))
    got = bank.fetch(torch.tensor([4, 5]), torch.tensor([[2, 0, 3], [1, 1, 0]]), length=2000)
    for b, picks in enumerate([[2, 0, 3], [1, 1, 0]]):
        want = fresh.rir[b][:, picks, :2000]
        want = want / fresh.rir[b].abs().max()
        torch.testing.assert_close(got[b], want, atol=2e-3, rtol=0)
    torch.testing.assert_close(bank.direct[4:6], fresh.direct)


def test_rebuild_resumes_and_refuses_other_settings(bank, tmp_path):
    chunk = bank.folder / "chunk-00001.npz"
    before = np.load(chunk)["rir"].copy()
    chunk.unlink()
    again = build(bank.folder, bank.settings)  # only the missing chunk is made, the same as before
    np.testing.assert_array_equal(np.load(chunk)["rir"], before)
    assert len(again) == 6
    with pytest.raises(BankError, match="describes another bank"):
        build(bank.folder, BankSettings(rooms=6, mics=4, sources=3, t60=(0.2, 0.5), chunk=4, seed=3))


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "bank.json").unlink(), "no room bank"),
    (lambda f: (f / "bank.json").write_text(json.dumps({**json.loads((f / "bank.json").read_text()), "version": 99})),
     "bank version 99"),
    (lambda f: (f / "chunk-00000.npz").unlink(), r"1 of 2 chunks missing \(first: chunk-00000.npz\)"),
    (lambda f: (f / "chunk-00001.npz").write_bytes(b"not a chunk"), "chunk-00001.npz: cannot be read"),
])
def test_bad_banks_are_refused_by_name(tmp_path, breakage, message):
    folder = tmp_path / "bank"
    build(folder, BankSettings(rooms=3, mics=2, sources=2, t60=(0.2, 0.3), chunk=2))
    breakage(folder)
    with pytest.raises(BankError, match=message):
        RoomBank(folder)


def test_empty_bank_and_bad_fetches_are_refused(bank):
    with pytest.raises(BankError, match="at least one room"):
        BankSettings(rooms=0)
    with pytest.raises(BankError, match=r"room indices must be within \[0, 6\)"):
        bank.fetch(torch.tensor([6]), torch.tensor([[0]]))
    with pytest.raises(BankError, match=r"mic indices must be within \[0, 4\)"):
        bank.fetch(torch.tensor([0]), torch.tensor([[4]]))


@pytest.mark.parametrize("tile", [True, False])
def test_crops_on_the_cpu_equal_the_device_gather(tile):
    speech, _ = _pools()
    files, offsets = torch.tensor([0, 2, 3, 2, 1]), torch.tensor([150, -500, 25999, 3, 29999])
    if not tile:
        offsets = torch.tensor([150, -500, 10, 0, 20])
    cpu = speech.crops(files, offsets, 12000, tile)  # a copy per crop
    torch.testing.assert_close(cpu, _gather(speech, files, offsets, 12000, tile))  # the device path's one gather
    # against the definition: short file 2 (9000 samples) placed 500 samples in, zeros around it
    if not tile:
        expect = torch.zeros(12000)
        expect[500:9500] = speech.audio[speech.starts[2] : speech.starts[2] + 9000]
        torch.testing.assert_close(cpu[1], expect)


def _gather(pool, files, offsets, samples, tile):
    """``SignalPool.crops`` as it runs on a GPU (the same expressions, here on CPU tensors)."""
    start, length = pool.starts[files][:, None], pool.lengths[files][:, None]
    position = offsets[:, None] + torch.arange(samples)[None]
    if tile:
        return pool.audio[start + position % length]
    inside = (position >= 0) & (position < length)
    return pool.audio[start + position.clamp(min=0).minimum(length - 1)] * inside


def _spec(**changes):
    base = dict(seconds=1.0, mics=(3, 3), snr_db=(0.0, 10.0), noise_kinds=(("recorded", 1.0),), mic_gain_db=0.0,
                sensor_snr_db=None)
    return BankMixSpec(**{**base, **changes})


def test_item_is_the_convolutions_at_the_drawn_snr(bank):
    """Against numpy: target = speech * (direct + 50 ms at the first chosen mic), circularly over the
    item; noisy minus the reverberant speech is the noise, at the drawn SNR at that mic."""
    speech, noise = _pools()
    spec = _spec()
    plans = draw_plans([5], seed=1, mic_block=1, spec=spec, bank=bank, speech=speech, noise=noise)
    noisy, target = mix(plans, speech, noise, bank, spec.seconds)
    room, mics = int(plans.rooms[0]), plans.mics[0]
    rir = bank.fetch(torch.tensor([room]), torch.from_numpy(mics[None]), length=int(bank.useful_lengths(torch.tensor([room]))[0]))[0]
    clean = speech.crops(torch.tensor([plans.speech[0]]), torch.tensor([plans.speech_offset[0]]), FS, tile=False)[0]
    early_end = int(np.floor(float(bank.direct[room, 0, int(mics[0])]))) + 800
    def circular(signal, response):  # the item is one period: the linear convolution wrapped onto it
        full = np.convolve(signal, response)
        return np.bincount(np.arange(len(full)) % FS, weights=full, minlength=FS)

    want_target = circular(clean.numpy(), rir[0, 0, :early_end].numpy())
    want_reverberant = np.stack([circular(clean.numpy(), rir[0, m].numpy()) for m in range(3)])
    scale = float(target.abs().max() / np.abs(want_target).max())  # the item's level is drawn: compare shapes
    np.testing.assert_allclose(target[0].numpy(), want_target * scale, atol=2e-5 * scale * np.abs(want_target).max() * 50)
    rest = noisy[0].numpy() - want_reverberant * scale
    snr = 10 * np.log10(np.mean((want_reverberant[0] * scale) ** 2) / np.mean(rest[0] ** 2))
    assert abs(snr - plans.snr_db[0]) < 0.05


def test_item_is_a_function_of_seed_and_index_alone(bank):
    speech, noise = _pools()
    data = BankMixtures(bank, speech, noise, size=16, seed=2, mic_block=4, spec=_spec(mics=(2, 4), sensor_snr_db=(30.0, 40.0),
                                                                                       mic_gain_db=2.0))
    batch = data.__getitems__([4, 5, 6, 7])
    alone = data[6]
    torch.testing.assert_close(alone[0], batch[2][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(alone[1], batch[2][1], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(batch[0][0], batch[1][0])
    assert len({tuple(item[0].shape) for item in batch}) == 1  # a block shares its mic count
    mixed = data.__getitems__([3, 4])  # two blocks in one call: each keeps its own mic count
    assert mixed[0][0].shape[0] == data[3][0].shape[0] and mixed[1][0].shape[0] == batch[0][0].shape[0]


@pytest.mark.parametrize("kind", ["babble", "talker"])
def test_talkers_are_other_speakers(bank, kind):
    speech, noise = _pools()
    plans = draw_plans(list(range(12)), seed=0, mic_block=12, spec=_spec(noise_kinds=((kind, 1.0),)), bank=bank,
                       speech=speech, noise=noise)
    for b in range(12):
        used = plans.crop_files[b][plans.crop_files[b] >= 0]
        assert (len(used) >= 3) if kind == "babble" else (len(used) == 1)
        assert all(speech.labels[u] != speech.labels[plans.speech[b]] for u in used)
        assert plans.crop_is_speech[b]


def test_items_need_enough_bank_mics(bank):
    speech, noise = _pools()
    with pytest.raises(ValueError, match="need a bank of 6 mics or more"):
        draw_plans([0], 0, 1, _spec(mics=(6, 6)), bank, speech, noise)
