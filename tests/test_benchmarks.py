"""The benchmark scripts run (in --smoke mode), so they never rot."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]


BACKEND = keras.backend.backend()


@pytest.mark.parametrize(
    "script, extra, backend",
    [
        ("bench_attention.py", ["--no-xla", "--backend", BACKEND], BACKEND),
        # bench_memory measures TensorFlow's allocator; it runs on TensorFlow only.
        ("bench_memory.py", ["--cases", "keras", "ours chunked", "ours flash"], "tensorflow"),
        # The PyTorch SDPA row runs beside ours, or says it was skipped.
        ("bench_memory.py", ["--cases", "ours flash", "pytorch sdpa"], "tensorflow"),
        # The sliding-window table runs the flash path of TensorFlow.
        ("bench_attention.py", ["--sliding-window", "16"], "tensorflow"),
        ("bench_generate.py", ["--backend", BACKEND], BACKEND),
        ("bench_speculative.py", ["--backend", BACKEND], BACKEND),
        # Greedy speed of quantized weights is a TensorFlow target; sizes and perplexity too.
        ("bench_quantize.py", [], "tensorflow"),
        # Models converted by `from_keras_hub` (issue 29): speed against keras-hub's
        # generate, and the LiteRT decode per token (LiteRT export is TensorFlow's).
        ("bench_generate.py", ["--from-keras-hub"], "tensorflow"),
        ("bench_litert_generation.py", ["--from-keras-hub"], "tensorflow"),
    ],
)
def test_benchmark_smoke(script, extra, backend):
    if backend != BACKEND:
        pytest.skip(f"a {backend} benchmark: it runs in the {backend} suite, not twice")
    if "--from-keras-hub" in extra:
        litert = ["ai_edge_litert"] if script == "bench_litert_generation.py" else []
        for module in ["keras_hub", *litert]:
            if importlib.util.find_spec(module) is None:
                pytest.skip(f"needs {module} (the `bench` and `export` extras)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) >= 3, result.stdout
    assert "nan" not in result.stdout and "failed" not in result.stdout, result.stdout
    if "--from-keras-hub" in extra:
        # Both converted models have a row; their greedy tokens equal keras-hub's
        # generate's (speed), or model.generate's through LiteRT in float32 (100 %).
        for name in ("| llama3.1 |", "| gemma2 |"):
            named = [row for row in rows if row.startswith(name)]
            assert len(named) == (2 if "litert" in script else 1), result.stdout
            if "litert" in script:
                assert named[0].startswith(f"{name} float32 |"), result.stdout
                assert named[0].endswith("| 100.0 % |"), result.stdout
            else:
                assert named[0].endswith("| yes |"), result.stdout
    elif script == "bench_generate.py" and importlib.util.find_spec("keras_hub"):
        # The published-architectures table (issue 28) runs tiny: both rows, and our
        # tokens equal keras-hub's generate's.
        names = ("| llama3.1 |", "| gemma2 |")
        architectures = [row for row in rows if row.startswith(names)]
        assert len(architectures) == 2, result.stdout
        assert all(row.endswith("| yes |") for row in architectures), result.stdout
