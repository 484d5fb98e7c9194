"""The GPU check script (benchmarks/gpu_check.sh), run here as its dry run: every step on the CPU at toy sizes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BENCHMARKS_WITH_A_DEVICE = sorted(
    path.stem for path in (ROOT / "benchmarks").glob("bench_*.py") if '"--device"' in path.read_text()
)


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    for argv, message in ((["--bogus"], "unknown argument '--bogus'"), (["--shapes", str(tmp_path / "none")], "--shapes:")):
        done = subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr
    assert not list(tmp_path.iterdir())


def test_every_benchmark_with_a_device_is_in_the_check():
    text = SCRIPT.read_text()
    assert BENCHMARKS_WITH_A_DEVICE and all(f"bench {name} " in text for name in BENCHMARKS_WITH_A_DEVICE)


@pytest.mark.integration
def test_the_dry_run_does_every_step(smollm, tmp_path):
    results = tmp_path / "gpu_check.md"
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--python", sys.executable, "--out", str(results)],
                          capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = results.read_text().split("\n### ", 1)[0]  # the steps' table; each step's own output follows
    steps = dict(re.findall(r"^\| ([^|]+?) \| ([^|]+?) \| \d+ \|$", summary, flags=re.M))
    expected = {"tiny shapes", "random weights", "environment", "CUDA tests", *BENCHMARKS_WITH_A_DEVICE}
    assert expected <= set(steps) and set(steps.values()) == {"ok"}, steps
    assert (tmp_path / "gpu_check.md.log").stat().st_size > 0
    assert re.search(r"\d+ passed", results.read_text())  # the CUDA tests ran, on the CPU standing in
