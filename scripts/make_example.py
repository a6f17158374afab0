"""Make the bundled noisy example: real recorded speech in a simulated room, heard by 4 mics.

    python scripts/make_example.py     # writes speechnorm/assets/example_4mic.flac and example_clean.flac

8 s of ``speechnorm/assets/real_speech/conversation.flac`` (from 6.5 s) in a shoebox room
(pyroomacoustics), a circular 4-mic array, pink noise and mains hum from two other positions at
5 dB SNR, seed 7. ``example_clean.flac`` is the target at mic 0 (direct path + 50 ms), for scoring.
"""

from __future__ import annotations

import numpy as np

from speechnorm.assets import ASSETS, EXAMPLE, REAL_SPEECH
from speechnorm.data.audio_io import read_audio, write_audio
from speechnorm.data.rooms import SAMPLE_RATE, MixSpec, array_geometry, simulate
from speechnorm.data.synthetic import coloured_noise, hum


def main() -> None:
    rng = np.random.default_rng(7)
    speech = read_audio(REAL_SPEECH, SAMPLE_RATE)[0][0]
    start, length = int(6.5 * SAMPLE_RATE), 8 * SAMPLE_RATE
    speech = speech[start : start + length]
    noises = [coloured_noise(rng, length, 1.0), hum(rng, length)]
    spec = MixSpec(snr_db=(5.0, 5.0), t60=(0.3, 0.3), noise_sources=(2, 2))
    noisy, target = simulate(rng, speech, noises, array_geometry(rng, "circular", 4), spec)
    write_audio(EXAMPLE, noisy, SAMPLE_RATE)
    write_audio(ASSETS / "example_clean.flac", target, SAMPLE_RATE)
    print(f"wrote {EXAMPLE} ({tuple(noisy.shape)}) and example_clean.flac")


if __name__ == "__main__":
    main()
