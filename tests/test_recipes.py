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


def test_throughput_smoke_run_times_every_row_against_the_fair_grid():
    report = run_smoke("throughput.py", "--token-size", "8", "--calibrate", "0.15")
    for row in ("dynamic", "8 px grid (fair)", "MobileNetV2 0.35, whole image", "dynamic, calibrated",
                "dynamic, networks only (patches cut beforehand)"):
        assert len(re.findall(rf"^\| {re.escape(row)} \| [\d-]+ \| \d+ \| \d+ \| \d+\.\d\d \| \d+\.\d\d \|$",
                              report, re.MULTILINE)) == 4, row  # 2 image sets x 2 batch sizes
    assert len(re.findall(r"^- target: calibrated >= 5x the 8 px grid .*\*\*(met|missed)\*\*", report,
                          re.MULTILINE)) == 4
    assert len(re.findall(r"^- bound, batch \d: the networks alone .* run \d+\.\d\dx", report, re.MULTILINE)) == 4


def test_overhead_smoke_run_reports_each_stage_and_the_target_of_each_set():
    report = run_smoke("overhead.py")
    for stage in ("complexity map", "complexity map + patcher", "whole embed", "embed + head (forward)"):
        assert len(re.findall(rf"^\| {re.escape(stage)} \| \d+\.\d{{3}} \|", report, re.MULTILINE)) == 2, stage
    assert re.search(r"<= 10% of forward .* \*\*(met|missed)\*\*", report)  # photos
    assert re.search(r"<= 25% of forward .* \*\*(met|missed)\*\*", report)  # needles
