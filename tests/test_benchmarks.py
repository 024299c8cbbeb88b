"""The benchmark scripts run (in --smoke mode), so they never rot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "script, extra",
    [("bench_attention.py", ["--no-xla"]), ("bench_memory.py", ["--cases", "keras", "ours chunked"])],
)
def test_benchmark_smoke(script, extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *extra],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 3, result.stdout
    assert "nan" not in result.stdout and "failed" not in result.stdout, result.stdout
