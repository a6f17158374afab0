"""The ablation table's arithmetic: mean ± standard deviation over seeds, and the verdict that
calls a difference inside the seeds' spread "no difference"."""

import importlib.util
import statistics
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ablation_report.py"
spec = importlib.util.spec_from_file_location("ablation_report", SCRIPT)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def row(setting, batch, seed, si_sdr):
    metrics = {f"{s}/{who}/{m}": value for s in report.SPLITS for who in ("noisy", "enhanced")
               for m, value in (("si_sdr", si_sdr if who == "enhanced" else 3.0), ("pesq", 1.5), ("stoi", 0.8))}
    return {"run": f"{setting}_b{batch}_s{seed}", "setting": setting, "batch": batch, "seed": seed, "steps": 600,
            "train_eval_gap": 1e-7, **{f"{s}/clips": 48 for s in report.SPLITS}, **metrics}


def test_mean_and_spread_over_seeds_and_the_verdict():
    rows = [row("a", 8, k, v) for k, v in enumerate((8.0, 8.2, 8.4))]  # mean 8.2, std 0.2
    rows += [row("b", 8, k, v) for k, v in enumerate((8.0, 8.05, 8.1))]  # 0.15 behind a: inside 0.2
    rows += [row("c", 8, k, v) for k, v in enumerate((7.0, 7.1, 7.2))]  # 1.1 behind: outside
    text = report.table(rows)
    assert f"| 8 | a | 3 | 8.20 ± {statistics.stdev([8.0, 8.2, 8.4]):.2f} |" in text
    assert "best on test SI-SDR is **a** (8.20 dB)" in text
    assert "no difference: b;" in text and "behind it: c (-1.10 dB)" in text
    assert "48 clips of `test`" in text and "600 training steps" in text


def test_level_robustness_table():
    script = Path(__file__).resolve().parents[2] / "scripts" / "level_robustness.py"
    spec = importlib.util.spec_from_file_location("level_robustness", script)
    levels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(levels)

    def scored(values):
        return {"levels": {str(level): {"enhanced": v, "noisy": 3.0, "clips": 48}
                           for level, v in zip((-30.0, 0.0, 10.0), values)}}

    groups = {"online": [scored((7.0, 8.0, 7.5)), scored((7.2, 8.2, 7.7))], "batch": [scored((4.0, 8.0, 6.0))]}
    text = levels.table(groups, (-30.0, 0.0, 10.0))
    assert "| online | 2 | 7.10 ± 0.14 | 8.10 ± 0.14 | 7.60 ± 0.14 | 1.00 |" in text  # drop at −30 dB: 1.0
    assert "| batch | 1 | 4.00 | 8.00 | 6.00 | 4.00 |" in text
    assert "the same 48 clips" in text
