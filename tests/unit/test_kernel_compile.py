"""The Triton kernels compiled ahead of time for the GPUs this project trains on (sm_80 A100,
sm_90 H100/H200) with the ptxas that ships in the Triton wheel: no GPU or driver needed.

Every configuration the models use compiles without register spills or a stack frame; where the
sizes are aligned (multiples of 16, which the launcher detects and specializes), every loop is
software-pipelined and the big tensors (x, g, the output) move in 8/16-byte accesses; the
per-sample statistics (D times smaller, one lane per feature at a stride of T) are read lane by lane. The check itself is shown to
see a spill (tiles too large for the registers) and an unpipelined loop (one stage)."""

import json
import os
import subprocess
import sys

import pytest
import triton

from speechnorm.norm.kernels import compile_check

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
pytestmark = pytest.mark.skipif(not os.path.exists(PTXAS), reason="this Triton wheel ships no ptxas")
CASES = compile_check.configurations()


def compile_reports(*options: str) -> dict[tuple, dict]:
    """``compile_check --json`` in a process without TRITON_INTERPRET (the interpreter, which the
    other tests use, replaces triton.language's functions and so breaks compiling for a GPU)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "speechnorm.norm.kernels.compile_check", "--json", *options],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    return {(r["kernel"], r["dtype"], r["target"], r["size"], r["aligned"]): r for r in reports}


@pytest.fixture(scope="module")
def reports():
    return compile_reports()


def test_every_configuration_is_checked(reports):
    assert len(reports) == len(CASES) and len(CASES) > 200
    assert {kernel for kernel, *_ in CASES} == set(compile_check.KERNELS)


@pytest.mark.parametrize(("kernel", "dtype", "target", "size", "aligned"), CASES)
def test_kernel_compiles_fast(reports, kernel, dtype, target, size, aligned):
    key = (kernel, dtype, target, size, aligned or kernel.endswith("_flat"))
    report = reports[key]
    assert report["spill_bytes"] == 0 and report["stack_bytes"] == 0, report
    assert report["loads"] > 0 and report["registers"] <= 255, report
    if report["aligned"]:
        if report["has_loop"]:
            assert report["pipelined"], f"loop not software-pipelined: {report}"
        element = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]
        per_thread = element * report["block"][0] // (32 * report["warps"]) if len(report["block"]) == 1 else 16
        if per_thread >= 8 and report["reads_data"]:  # a thread holding 8 bytes or more of x or g moves them at once
            assert report["vector_loads"] > 0, f"no 8/16-byte accesses: {report}"


def test_the_check_sees_a_spill():
    (report,) = compile_reports("--tile", "16384", "--only", "affine_rows:fp32:sm_90:256").values()
    assert report["spill_bytes"] > 0, report


def test_the_check_sees_an_unpipelined_loop():
    (report,) = compile_reports("--stages", "1", "--only", "d1_forward:bf16:sm_90:256:aligned").values()
    assert report["has_loop"] and not report["pipelined"], report
