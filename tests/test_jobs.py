"""`ray job submit` of jobs/tune.py with configs/smoke.yaml against a Ray head this test starts and stops.

The head is its own `ray start --head --block` process on free ports with its own temp dir; the test
terminates that process only (never `ray stop`, which would stop every Ray instance on the machine).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from drray.config import Config
from drray.schema import TRIALS_SCHEMA
from drray.training.tune import check_tune_config
from test_train import make_tiny_set

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_for_dashboard(url: str, head: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"`ray start --head` exited with status {head.returncode}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return  # the server answers (an auth error still means it is up)
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise AssertionError(f"the Ray dashboard at {url} did not come up within {timeout_s}s")


@pytest.mark.parametrize("recipe", ["smoke.yaml", "aptos2019.yaml", "eyepacs2015.yaml", "synth_demo.yaml"])
def test_shipped_recipes_are_valid_searches(recipe):
    cfg = Config.from_yaml(REPO / "configs" / recipe)
    check_tune_config(cfg)
    assert cfg.tune.backbones


def test_cluster_recipes_give_each_trial_four_gpus():
    for recipe in ("aptos2019.yaml", "eyepacs2015.yaml"):
        cfg = Config.from_yaml(REPO / "configs" / recipe)
        assert cfg.train.use_gpu and cfg.train.num_workers * cfg.train.gpus_per_worker == 4
        assert set(cfg.tune.heads) & {"ordinal"} and min(cfg.tune.image_sizes) >= 384


def _final_status(url: str, sid: str, env: dict, deadline: float) -> str:
    """Poll `ray job status` until the job ends; its final state (SUCCEEDED, FAILED or STOPPED)."""
    while True:
        st = subprocess.run([str(RAY), "job", "status", "--address", url, sid], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
        said = st.stdout.lower()  # "Status for job 'x': RUNNING", then "Job 'x' succeeded" / "failed" / "stopped"
        for state in ("succeeded", "failed", "stopped"):
            if f"job '{sid}' {state}" in said or f"job '{sid}': {state}" in said:
                return state.upper()
        assert time.monotonic() < deadline, f"job {sid} still running at the deadline:\n{st.stdout[-2000:]}"
        time.sleep(2)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ray_job_submit_runs_the_smoke_search(tmp_path):
    manifest = make_tiny_set(tmp_path / "data")
    # Ray's socket paths must stay short: a temp dir directly under /tmp, not pytest's deep tmp_path.
    temp_dir = Path(tempfile.mkdtemp(prefix="drray-job-", dir="/tmp"))
    port, dashboard, client, agent = _free_ports(4)
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    # No 30 s drain on SIGTERM: this head serves one finished job.
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env={**env, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{dashboard}"
        _wait_for_dashboard(url, head)
        out = tmp_path / "out"
        # The entrypoint runs with the head's PATH: name this interpreter, the one drray is installed in.
        # --no-wait, then polling the status: the CLI's log tail (a WebSocket) has dropped on a loaded
        # machine (close code 1006) while the job itself ran on, and the test is about the job.
        sid = "drray-smoke-search"
        submit = subprocess.run(
            [str(RAY), "job", "submit", "--address", url, "--submission-id", sid, "--no-wait",
             "--runtime-env", "jobs/runtime_env.yaml", "--",
             sys.executable, "jobs/tune.py", "--config", "configs/smoke.yaml", "--manifest", manifest,
             "--out", str(out), f"train.storage_path={tmp_path / 'ray_results'}", "tune.verbose=0",
             # One of the recipe's two backbones and one epoch keep the test short; two DDP ranks stay.
             "tune.backbones=[test_resnet]", "train.epochs=1"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )
        assert submit.returncode == 0, f"submission failed:\n{submit.stdout[-4000:]}\n{submit.stderr[-4000:]}"
        status = _final_status(url, sid, env, deadline=time.monotonic() + 330)
        logs = subprocess.run([str(RAY), "job", "logs", "--address", url, sid], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)
        assert status == "SUCCEEDED", f"job {status}:\n{logs.stdout[-4000:]}\n{logs.stderr[-2000:]}"
        trials = pq.read_table(out / "trials.parquet")
        assert set(TRIALS_SCHEMA.names) <= set(trials.schema.names)
        assert trials.column("backbone").to_pylist() == ["test_resnet"]
        assert trials.column("status").to_pylist() == ["completed"]
        assert (out / "model" / "model.json").is_file() and (out / "model" / "weights.safetensors").is_file()
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)
