"""The batched room generator against pyroomacoustics' full image-source simulation of the same rooms
(the truth: an independent implementation), against the diffuse-field coherence of theory, and
its bad input."""

import math

import numpy as np
import pyroomacoustics as pra
import pytest
import torch
from pyroomacoustics.experimental.rt60 import measure_rt60
from scipy.signal import butter, sosfilt

from speechnorm.data.roomgen import RoomBatch, generate, random_rooms, reflection_for_t60

FS = 16_000
FLAT = ((1000.0, 1.0),)  # one T60 for all bands, as pyroomacoustics' frequency-flat walls
# (size, t60, array centre, talker): three rooms from small and dry to large and live
ROOMS = [((6.0, 4.2, 3.0), 0.5, (2.5, 2.0, 1.4), (4.5, 3.1, 1.6)),
         ((4.0, 3.5, 2.7), 0.3, (1.5, 1.2, 1.2), (3.0, 2.5, 1.5)),
         ((8.0, 6.0, 3.5), 0.8, (3.0, 2.5, 1.3), (5.5, 4.5, 1.7))]


def _square(centre, radius=0.035):
    angles = np.arange(4) * np.pi / 2
    return np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles), np.full(4, centre[2])], 1)


def _measures(rir: np.ndarray, direct: float) -> tuple[float, float, float]:
    """DRR (±1 ms around the direct sound), C50 and mid-band T60 (mean of the 500 Hz and 1 kHz
    octaves, T20 of the Schroeder curve) of one response."""
    d, rir = int(round(direct)), np.asarray(rir, np.float64)
    near = np.sum(rir[max(d - 16, 0) : d + 17] ** 2)
    drr = 10 * np.log10(near / (np.sum(rir**2) - near))
    c50 = 10 * np.log10(np.sum(rir[: d + 800] ** 2) / np.sum(rir[d + 800 :] ** 2))
    bands = [sosfilt(butter(4, [f / 2**0.5, f * 2**0.5], "bandpass", fs=FS, output="sos"), rir) for f in (500, 1000)]
    return drr, c50, float(np.mean([measure_rt60(b, FS, decay_db=20) for b in bands]))


@pytest.fixture(scope="module")
def both():
    return _both()


def _both():
    """Our responses and pyroomacoustics' (full order, the same walls) of ``ROOMS``."""
    size = torch.tensor([r[0] for r in ROOMS])
    t60 = torch.tensor([r[1] for r in ROOMS])
    mics = torch.tensor(np.stack([_square(r[2]) for r in ROOMS]))
    talkers = torch.tensor([[r[3]] for r in ROOMS])
    ours = generate(RoomBatch(size, t60, talkers, mics), torch.Generator().manual_seed(0), t60_shape=FLAT)
    beta = reflection_for_t60(size, t60)
    theirs = []
    for b, (dims, seconds, centre, talker) in enumerate(ROOMS):
        order = int(math.ceil(343 * 1.1 * seconds / min(dims)))
        room = pra.ShoeBox(list(dims), fs=FS, materials=pra.Material(float(1 - beta[b] ** 2)), max_order=order)
        room.add_microphone_array(_square(centre).T)
        room.add_source(list(talker))
        room.compute_rir()
        delay = pra.constants.get("frac_delay_length") // 2  # pyroomacoustics' responses start this late
        theirs.append([np.asarray(room.rir[m][0][delay:]) for m in range(4)])
    return ours, theirs


@pytest.mark.parametrize("room", range(len(ROOMS)))
def test_drr_c50_t60_match_the_full_image_source_model(both, room):
    ours, theirs = both
    for mic in range(4):
        direct = float(ours.direct[room, 0, mic])
        drr, c50, t60 = _measures(ours.rir[room, 0, mic, : int(ours.length[room])].numpy(), direct)
        ref_drr, ref_c50, ref_t60 = _measures(theirs[room][mic], direct)
        assert abs(drr - ref_drr) < 1.0, (room, mic, drr, ref_drr)
        assert abs(c50 - ref_c50) < 1.0, (room, mic, c50, ref_c50)
        assert abs(t60 - ref_t60) < 0.1 * ref_t60, (room, mic, t60, ref_t60)
        assert abs(t60 - ROOMS[room][1]) < 0.1 * ROOMS[room][1]  # and both are the T60 asked for


def test_early_part_is_the_image_sources_with_fractional_delays(both):
    """The first 50 ms after the direct sound: the same waveform as pyroomacoustics' (81-tap
    fractional delays there, 32 here), so sub-sample inter-mic delays are kept."""
    ours, theirs = both
    for room in range(len(ROOMS)):
        for mic in range(4):
            end = int(ours.direct[room, 0, mic]) + 800
            a, b = ours.rir[room, 0, mic, :end].numpy(), theirs[room][mic][:end]
            assert np.corrcoef(a, b)[0, 1] > 0.98, (room, mic)
    # mics 0 and 2 are 7 cm apart on the line to nowhere in particular: their direct delays differ
    # by a fraction of a sample that rounding would lose
    assert float(ours.direct[0, 0, 0] - ours.direct[0, 0, 2]) % 1 != 0


def test_target_response_is_direct_plus_50_ms_of_the_same_response(both):
    ours, _ = both
    early = ours.early()
    for room in range(len(ROOMS)):
        end = int(ours.direct[room, 0, 0]) + 800
        torch.testing.assert_close(early[room, 0, 0, :end], ours.rir[room, 0, 0, :end])
        assert early[room, 0, 0, end:].abs().max() == 0


def test_late_coherence_is_the_diffuse_field_sinc():
    """Between two mics 7 cm apart the late part's coherence at 250 Hz, 1 kHz and 2 kHz is
    sin(2π f d / c) / (2π f d / c) (averaged over 48 rooms' tails), not 0 as independent noise per mic."""
    count, spacing = 48, 0.07
    rng = np.random.default_rng(1)
    rooms = random_rooms(rng, count, mics=2, sources=1, t60=(0.6, 0.9))
    centre = rooms.mics.mean(dim=1, keepdim=True)
    rooms.mics = centre + torch.tensor([[-spacing / 2, 0, 0], [spacing / 2, 0, 0]])
    out = generate(rooms, torch.Generator().manual_seed(2), highpass_hz=0)
    start = int(out.direct.max()) + int(0.1 * FS)
    late = out.rir[:, 0, :, start : start + int(0.3 * FS)]  # (B, 2, N)
    spectra = torch.stft(late.reshape(-1, late.shape[-1]), 512, 128, window=torch.hann_window(512),
                         return_complex=True).view(count, 2, 257, -1)
    # each frame scaled by its power over both mics and all bins, so the decay does not weight the average
    spectra = spectra / (spectra.abs().square().sum(dim=(1, 2), keepdim=True).sqrt() + 1e-20)
    cross = (spectra[:, 0] * spectra[:, 1].conj()).mean(dim=(0, 2))
    power = (spectra[:, 0].abs().square().mean(dim=(0, 2)) * spectra[:, 1].abs().square().mean(dim=(0, 2))).sqrt()
    coherence = (cross.real / power).numpy()
    for freq in (250, 1000, 2000):
        theory = np.sinc(2 * freq * spacing / 343)
        assert abs(coherence[round(freq * 512 / FS)] - theory) < 0.08, (freq, coherence[round(freq * 512 / FS)], theory)


def test_high_pass_removes_the_dc():
    rooms = random_rooms(np.random.default_rng(3), 4, mics=2, sources=2)
    with_hp = generate(rooms, torch.Generator().manual_seed(0))
    without = generate(rooms, torch.Generator().manual_seed(0), highpass_hz=0)
    dc = lambda r: (r.rir.sum(dim=-1).abs() / r.rir.abs().sum(dim=-1)).mean()
    assert dc(without) > 0.05 and dc(with_hp) < 0.1 * dc(without)


def test_tail_decays_faster_at_high_frequencies():
    rooms = random_rooms(np.random.default_rng(4), 8, mics=1, sources=1, t60=(0.8, 0.8))
    out = generate(rooms, torch.Generator().manual_seed(0))
    bands = [[measure_rt60(sosfilt(butter(4, [f / 2**0.5, f * 2**0.5], "bandpass", fs=FS, output="sos"),
                                   out.rir[b, 0, 0].double().numpy()), FS, decay_db=20) for b in range(8)]
             for f in (500, 4000)]
    assert np.mean(bands[1]) < 0.85 * np.mean(bands[0])


def test_batch_is_reproducible_and_rooms_independent_of_their_batch():
    rooms = random_rooms(np.random.default_rng(5), 3, mics=3, sources=2)
    a = generate(rooms, torch.Generator().manual_seed(7))
    b = generate(rooms, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.rir, b.rir, rtol=0, atol=0)
    assert a.rir.shape[:3] == (3, 2, 3) and (a.length <= a.rir.shape[-1]).all()
    images = generate(rooms, tail=False)  # the images of a room do not depend on the other rooms
    alone = generate(RoomBatch(rooms.size[1:2], rooms.t60[1:2], rooms.sources[1:2], rooms.mics[1:2]), tail=False,
                     length=images.rir.shape[-1])
    torch.testing.assert_close(alone.rir[0], images.rir[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("change, message", [
    (lambda r: setattr(r, "mics", r.mics + torch.tensor([10.0, 0, 0])), r"mics\[0, 0\] .* outside room 0"),
    (lambda r: r.sources.__setitem__((1, 1, 2), -0.1), r"sources\[1, 1\] .* outside room 1"),
    (lambda r: r.t60.__setitem__(0, 0.0), r"t60 of room 0 is 0 s"),
    (lambda r: setattr(r, "size", r.size[:0]), "at least one room"),
])
def test_bad_rooms_are_refused_by_name(change, message):
    rooms = random_rooms(np.random.default_rng(6), 2, mics=2, sources=2)
    fields = RoomBatch(rooms.size.clone(), rooms.t60.clone(), rooms.sources.clone(), rooms.mics.clone())
    change(fields)
    with pytest.raises(ValueError, match=message):
        RoomBatch(fields.size, fields.t60, fields.sources, fields.mics)
