"""Every benchmark script runs end to end on tiny data (`--smoke-test`), so none of them rots."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", ["synth_throughput.py", "preprocess_throughput.py", "cam_throughput.py",
                                    "train_overhead.py", "cam_validity.py", "explain_pipeline.py",
                                    "explain_scale.py", "serve_latency.py", "audit_shortcuts.py",
                                    "checkpoint_load.py"])
def test_benchmark_smoke(script):
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke-test"], capture_output=True, text=True,
                       timeout=230)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), "a benchmark prints its figures"


def test_gpu_check_script_calls_real_scripts_with_flags_they_take():
    """benchmarks/gpu_check.sh runs only on GPU machines: here its syntax and every flag it passes are checked."""
    import re
    import shlex

    script = (BENCH / "gpu_check.sh").read_text()
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")]).returncode == 0
    calls = re.findall(r"\"\$PY\" (benchmarks/\w+\.py)((?:\\\n|[^\n])*)", script)
    assert {c[0] for c in calls} == {"benchmarks/cam_throughput.py", "benchmarks/explain_pipeline.py"}
    for path, rest in calls:
        flags = [w for w in shlex.split(rest.replace("\\\n", " ")) if w.startswith("--")]
        helptext = subprocess.run([sys.executable, str(BENCH.parent / path), "--help"], capture_output=True,
                                  text=True, timeout=120).stdout
        for flag in flags:
            assert flag in helptext, f"{path} does not take {flag}"
