"""The command line as a user runs it."""

import subprocess
import sys

import speechnorm
from speechnorm.demo import run


def speechnorm_cli(*args):
    return subprocess.run([sys.executable, "-m", "speechnorm", *args], capture_output=True, text=True, timeout=120)


def test_version_and_help():
    done = speechnorm_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"speechnorm {speechnorm.__version__}"
    done = speechnorm_cli("--help")
    assert done.returncode == 0
    for command in ("demo", "norms"):
        assert command in done.stdout


def test_norms_lists_every_registered_kind():
    from speechnorm.norm import available

    done = speechnorm_cli("norms")
    assert done.returncode == 0
    for name, spec in available().items():
        assert name in done.stdout and spec.streaming in done.stdout


def test_demo_shows_what_it_claims():
    lines = []
    figures = run(frames=800, channels=4, bins=16, echo=lines.append)
    assert any("max |diff|" in line for line in lines)
    # The input's std grows 100x over the stream; the output's stays near 1 once tracking.
    for quarter in (2, 3, 4):
        assert 0.7 < figures[f"output_std_q{quarter}"] < 1.6, figures
    assert figures["stream_vs_offline_max_abs"] < 1e-4
    assert abs(figures["grad_mean"]) < 0.05 and abs(figures["grad_dot_y"]) < 0.1


def test_bad_arguments_exit_2_with_one_line():
    done = speechnorm_cli("demo", "--frames", "zero")
    assert done.returncode == 2 and "invalid int value" in done.stderr
    done = speechnorm_cli("enhance")
    assert done.returncode == 2 and "required: input, -o/--output" in done.stderr
    done = speechnorm_cli("frobnicate")
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_models_lists_every_model_and_size_with_parameters():
    from speechnorm.models import available, build, count_parameters

    done = speechnorm_cli("models", "--hops", "0")
    assert done.returncode == 0, done.stderr
    for name, spec in available().items():
        for size in spec.sizes:
            assert f"{count_parameters(build(name, size=size)):,}" in done.stdout
