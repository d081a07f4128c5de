"""Shared fixtures: one Ray instance for the whole session, the serve tests' application, a local S3 endpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Object-storage tests talk to moto's S3 server on loopback, configured the standard way (the AWS
# environment variables pyarrow reads). Set before Ray starts, so its workers inherit them; the
# values are overwritten, never taken from the developer's shell, so no test reaches a real bucket.
S3_PORT = _free_port()
os.environ.update({
    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
    "AWS_ACCESS_KEY_ID": "drray-test",
    "AWS_SECRET_ACCESS_KEY": "drray-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
})
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test that needs Ray (use fractional CPUs in tests)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def server(ray_session, tmp_path_factory, request):
    """The Serve application the serve test modules share (tests/test_serve_support.py): started by the first
    that asks, shut down after the last, so the CPUs it holds go back to the tests after them."""
    import test_serve_support as support

    yield support.shared_server(tmp_path_factory)
    support.release_if_last(request)


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on 127.0.0.1 (started here, stopped at the end); yields its endpoint."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", S3_PORT), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto's S3 server did not start on port {S3_PORT} (exit code {proc.poll()})")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket for one test: its s3:// URI."""
    import uuid

    from pyarrow import fs as pafs

    name = f"drray-{uuid.uuid4().hex[:10]}"
    fs, _ = pafs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")
    fs.create_dir(name)
    return f"s3://{name}"
