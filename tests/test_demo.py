"""`drray demo` as a person runs it: one line per step, no repeated warning, every artefact where it says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_prints_a_short_console_and_writes_the_whole_run(tmp_path: Path):
    out = tmp_path / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "drray", "demo", "--no-serve", "--out", str(out), "synth.n=80", "synth.size=128",
         "data.preprocess.image_size=64", "train.epochs=2", "tune.backbones=[test_resnet]", "tune.grace_period=1",
         "explain.sanity_images=4"],
        capture_output=True, text=True, timeout=580, cwd=tmp_path, env={**os.environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = (r.stdout + r.stderr).splitlines()
    assert len(lines) < 60, "\n".join(lines)
    warnings = [ln for ln in lines if "warn" in ln.lower()]
    assert not [w for w, n in Counter(warnings).items() if n > 1], warnings
    for step in ("[1/7] synth", "[3/7] tune", "[4/7] explain", "[5/7] audit", "[6/7] evaluate", "[7/7] report"):
        assert any(ln.startswith(step) for ln in lines), step
    assert lines[-1] == f"log: {out / 'logs' / 'drray.log'}"
    for name in ("manifest.parquet", "trials.parquet", "model/model.json", "metrics.json", "metrics.parquet",
                 "report.html", "randomisation.parquet", "strategies.parquet", "strategy_of.parquet",
                 "logs/drray.log", "summary.json"):
        assert (out / name).exists(), name
    assert any((out / "explanations").rglob("*.parquet"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_images"] > 0 and summary["observations"]
    assert isinstance(summary["suspect_strategies"], int)
    assert 'id="strategies"' in (out / "report.html").read_text()
    # Ray's own output went to the log, not the console.
    log = (out / "logs" / "drray.log").read_text()
    assert "Started a local Ray instance" in log and not any("Started a local Ray" in ln for ln in lines)
