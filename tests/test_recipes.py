"""The benchmark scripts in recipes/benchmarks run (`--smoke`), so they cannot rot."""

import os
import re
import subprocess
import sys


RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "benchmarks")


def run_smoke(script, *flags):
    result = subprocess.run([sys.executable, os.path.join(RECIPES, script), "--smoke", *flags],
                            cwd=RECIPES, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_study_smoke_run_reports_every_row(tmp_path):
    plot = tmp_path / "study.png"
    report = run_smoke("study.py", "--plot", str(plot))
    for row in ("dynamic, budget 0.15, pooled head", "dynamic, budget 0.15, transformer head",
                "fixed 8 px grid, pooled head", "uniform 32 px grid (equal patches), transformer head",
                "MobileNetV2 0.35"):
        assert f"| {row} |" in report
    assert plot.stat().st_size > 10_000


def test_identification_smoke_run_reports_every_row():
    report = run_smoke("identification.py")
    for row in ("dynamic, budget 0.2", "fixed 16 px grid"):
        assert re.search(rf"^\| {row} \| \d\.\d{{3}} ± \d\.\d{{3}} \| \d\.\d{{3}} ± ", report, re.MULTILINE), row
