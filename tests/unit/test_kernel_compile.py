"""The Triton kernels compiled ahead of time for the GPUs this project trains on (sm_80 A100,
sm_90 H100/H200) with the ptxas that ships in the Triton wheel: no GPU or driver needed. Every
configuration the models use compiles without register spills or a stack frame; and the check
itself sees a spill when a kernel is given tiles too large for its registers."""

import json
import os
import subprocess
import sys

import pytest
import triton

from speechnorm.norm.kernels import compile_check

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
pytestmark = pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton wheel ships no ptxas")

CASES = [(kernel, dtype, target, width) for kernel in ("moments", "affine", "grad_moments", "grad_affine")
         for dtype in ("fp32", "bf16") for target in compile_check.TARGETS for width in compile_check.WIDTHS]
CASES += [("scan", dtype, target, 1) for dtype in ("fp32", "fp64") for target in compile_check.TARGETS]


def compile_reports(*options: str) -> dict[tuple, dict]:
    """``compile_check --json`` in a process without TRITON_INTERPRET (the interpreter, which the
    other tests use, replaces triton.language's functions and so breaks compiling for a GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "speechnorm.norm.kernels.compile_check", "--json", *options],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    return {(r["kernel"], r["dtype"], r["target"], r["width"]): r for r in reports}


@pytest.fixture(scope="module")
def reports():
    return compile_reports()


@pytest.mark.parametrize(("kernel", "dtype", "target", "width"), CASES)
def test_kernel_compiles_without_spills(reports, kernel, dtype, target, width):
    report = reports[(kernel, dtype, target, width)]
    assert report["spill_bytes"] == 0 and report["stack_bytes"] == 0, report
    assert report["loads"] > 0 and report["registers"] <= 255, report


def test_the_check_sees_a_spill():
    # the tile size before 2026-12-03: 32 fp32 per thread
    (report,) = compile_reports("--tile", "4096", "--only", "affine:fp32:sm_90:1").values()
    assert report["spill_bytes"] > 0, report
