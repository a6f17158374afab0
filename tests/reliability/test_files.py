"""Files as the world sends them: every PCM and float format, rates, channel counts, each kind
of broken file, fuzzed bytes, and a long recording in constant memory. Every case gets a correct
result or one clear error, and a failed run leaves no output file behind."""

import io
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechnorm.enhance import EnhanceError, enhance_file

pytestmark = pytest.mark.reliability


def speechlike(rate, seconds, channels, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    voice = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.stack([voice + 0.05 * rng.standard_normal(t.size) for _ in range(channels)], axis=1).astype(np.float32)


FORMATS = [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
           ("WAV", "DOUBLE"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24")]


@pytest.mark.parametrize("container, subtype", FORMATS)
def test_every_sample_format_is_enhanced_in_its_own_format(tmp_path, container, subtype):
    suffix = ".wav" if container == "WAV" else ".flac"
    src, dst = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    sf.write(src, speechlike(16000, 0.5, 2), 16000, subtype=subtype, format=container)
    enhance_file(src, dst)
    info = sf.info(dst)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 8000, subtype)
    out, _ = sf.read(dst, dtype="float32")
    assert np.isfinite(out).all() and np.abs(out).max() > 1e-3


@pytest.mark.parametrize("rate, channels", [(8000, 1), (22050, 3), (44100, 8), (48000, 16), (96000, 2)])
def test_rates_and_channel_counts(tmp_path, rate, channels):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, speechlike(rate, 0.4, channels), rate, subtype="FLOAT")
    enhance_file(src, dst)
    info = sf.info(dst)
    assert (info.samplerate, info.channels, info.frames) == (rate, 1, int(rate * 0.4))


def test_clipped_input_is_enhanced_not_refused(tmp_path):
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(src, np.clip(4 * speechlike(16000, 0.5, 2), -1, 1), 16000, subtype="PCM_16")
    enhance_file(src, dst)
    assert np.isfinite(sf.read(dst)[0]).all()


def broken_files(folder):
    valid = io.BytesIO()
    sf.write(valid, speechlike(16000, 1.0, 2), 16000, subtype="PCM_16", format="WAV")
    data = valid.getvalue()
    cases = {
        "truncated_header.wav": data[:30],
        "corrupt_header.wav": data[:8] + b"JUNK" + data[12:],
        "no_bytes.wav": b"",
        "text.wav": b"this is not audio at all\n" * 20,
    }
    for name, payload in cases.items():
        (folder / name).write_bytes(payload)
    sf.write(folder / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    sf.write(folder / "seventeen.wav", np.zeros((160, 17), np.float32), 16000)
    for value in (np.nan, np.inf):
        bad = speechlike(16000, 1.0, 2)
        bad[12345, 1] = value
        sf.write(folder / f"{value}.wav", bad, 16000, subtype="FLOAT")
    sf.write(folder / "lowrate.wav", speechlike(4000, 0.5, 1), 4000)
    return sorted(folder.iterdir())


def test_each_broken_file_gets_a_clear_error_and_no_output(tmp_path):
    (tmp_path / "in").mkdir()
    for src in broken_files(tmp_path / "in"):
        dst = tmp_path / "out" / f"{src.stem}.wav"
        with pytest.raises(EnhanceError) as err:
            enhance_file(src, dst)
        assert src.name in str(err.value)
        assert not dst.exists()
    assert not list(tmp_path.rglob("*.partial"))  # no half-written file anywhere


def test_a_truncated_body_is_enhanced_up_to_where_it_ends(tmp_path):
    valid = io.BytesIO()
    sf.write(valid, speechlike(16000, 1.0, 2), 16000, subtype="PCM_16", format="WAV")
    src = tmp_path / "cut.wav"
    src.write_bytes(valid.getvalue()[: 44 + 4 * 6000])  # the header still says 16000 frames
    enhance_file(src, tmp_path / "out.wav")
    assert sf.info(tmp_path / "out.wav").frames in (6000, 16000)  # libsndfile reports what it can read


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzzed_files_never_crash(tmp_path, data):
    valid = io.BytesIO()
    sf.write(valid, speechlike(16000, 0.2, 2, seed=1), 16000, subtype="PCM_16", format="WAV")
    payload = bytearray(valid.getvalue())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    src, dst = tmp_path / "fuzz.wav", tmp_path / "fuzz_out.wav"
    src.write_bytes(bytes(payload[:cut]))
    dst.unlink(missing_ok=True)
    try:
        enhance_file(src, dst)
    except EnhanceError:
        assert not dst.exists()
    else:
        out, rate = sf.read(dst)
        assert np.isfinite(out).all() and out.shape[0] == sf.info(src).frames


def peak_python_memory(tmp_path, seconds):
    src = tmp_path / f"long{seconds}.wav"
    with sf.SoundFile(src, "w", 16000, 4, "PCM_16") as sink:  # written block by block
        block = speechlike(16000, 10.0, 4)
        for _ in range(int(seconds // 10)):
            sink.write(block)
    tracemalloc.start()
    enhance_file(src, tmp_path / "out.wav")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sf.info(tmp_path / "out.wav").frames == 16000 * seconds
    return peak


def test_a_long_file_streams_in_constant_memory(tmp_path):
    short, long = peak_python_memory(tmp_path, 10), peak_python_memory(tmp_path, 180)
    assert long < short * 1.5 + 2_000_000, (short, long)  # 18x the audio, not 18x the memory


@pytest.mark.slow
def test_an_hour_long_file_streams_in_constant_memory(tmp_path):
    short, long = peak_python_memory(tmp_path, 10), peak_python_memory(tmp_path, 3600)
    assert long < short * 1.5 + 2_000_000, (short, long)
