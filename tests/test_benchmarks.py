"""Every benchmark script runs end to end on tiny data (`--smoke-test`), so none of them rots."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", ["synth_throughput.py", "preprocess_throughput.py", "cam_throughput.py",
                                    "train_overhead.py", "cam_validity.py"])
def test_benchmark_smoke(script):
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke-test"], capture_output=True, text=True,
                       timeout=230)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), "a benchmark prints its figures"
