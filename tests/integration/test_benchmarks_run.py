"""The benchmark scripts run (tiny settings: a smoke test, not a measurement)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("bench_norm.py", ["--quick", "--repeats", "1"], "reference loop / OnlineNorm core"),
        ("bench_norm.py", ["--recipe", "--quick", "--no-reference", "--dtypes", "bf16", "--repeats", "1"],
         "| bf16 | time | (32, 128, 200) strided | OnlineNorm + layer scaling |"),
        ("trace_bytes.py", ["--widths", "1", "9", "--dtypes", "fp32"], "| fp32 | 9 |"),
        ("bench_stream.py", ["--hops", "3", "--mics", "2", "--models", "tac_gru", "--sizes", "small"], "| 2 | onnx |"),
        ("bench_memory.py", ["--seconds", "0.5", "--mics", "2"], "| online | 1 |"),
        ("bench_train_step.py", ["--seconds", "0.2", "--repeats", "1", "--batch", "1", "--mics", "2",
                                 "--norms", "batch", "online"], "| tac_crn | online |"),
    ],
)
def test_benchmark_script_runs(script, args, expect):
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert expect in done.stdout
