"""What the serve tests share (no tests here): a tiny model dir, a small run directory, one Serve application.

Serve starts once per test process, on loopback, with the session's Ray (tests/conftest.py) and
fractional CPUs, and serves every serve test module (REST, page, browser): starting it takes most
of a minute on 2 shared cores, so the modules share one application instead of paying that
three times. Limits are small so the tests can pass them cheaply.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIZE = 64
MAX_BODY_MB = 1.0
MAX_IMAGE_PIXELS = 3_000_000
MAX_BATCH_SIZE = 4
BATCH_WAIT_S = 0.1
EXAMPLES = Path(__file__).parents[1] / "drray" / "serve" / "examples"
RETINA = EXAMPLES / "retina_skimage.jpg"


@dataclass(frozen=True)
class Server:
    url: str
    model_dir: Path
    run_dir: Path


_lock = threading.Lock()
_server: Server | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model_dir(out: Path) -> Path:
    import torch

    from drray.config import PreprocessConfig
    from drray.models.model import create_model, save_model

    torch.manual_seed(0)
    model = create_model("test_resnet", head="ordinal", image_size=SIZE,
                         preprocess=PreprocessConfig(image_size=SIZE, ben_graham=True))
    return Path(save_model(model.eval(), out))


def make_run_dir(out: Path, model_dir: Path, n: int = 8) -> Path:
    """A run directory with a manifest and an explanations table (two datasets, labels, hits and misses)."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    from PIL import Image

    from drray.config import SynthConfig
    from drray.data.synth.render import render
    from drray.inference import Predictor
    from drray.schema import EXPLANATIONS_SCHEMA, MANIFEST_SCHEMA

    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_model_dir(model_dir, methods=["gradcam"])
    cfg = SynthConfig(n=n, size=128, seed=3)
    rows, manifest = [], []
    for i in range(n):
        img = render(cfg.seed, i, cfg)
        path = out / "synth" / f"img{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img.image).save(path)
        r = predictor.explain_image(img.image)
        image_id, dataset = f"img{i}", ("synth" if i < n - 2 else "other")
        label = None if i == n - 1 else img.grade
        rows.append({"image_id": image_id, "dataset": dataset, "split": "test", "label": label,
                     "model_id": r["model_id"], "pred": r["grade"], "probs": r["probs"],
                     "referable_prob": r["referable_prob"], "cam_method": "gradcam", "target_class": -1,
                     "cam": np.zeros((4, 4), np.float16).tobytes(), "cam_h": 4, "cam_w": 4,
                     "peak_y": r["peak_y"], "peak_x": r["peak_x"], "cam_entropy": r["cam_entropy"],
                     "pointing_hit": [True, False, None][i % 3], "quality_ok": r["quality_ok"],
                     "overlay_png": r["overlay_png"]})
        manifest.append({"image_id": image_id, "dataset": dataset, "path": str(path), "label": label,
                         "patient_id": f"p{i // 2}", "eye": img.eye, "split": "test",
                         "width": 128, "height": 128})
    full = [{name: row.get(name) for name in EXPLANATIONS_SCHEMA.names} for row in rows]
    pads.write_dataset(pa.Table.from_pylist(full, schema=EXPLANATIONS_SCHEMA), str(out / "explanations"),
                       format="parquet", partitioning=["dataset", "split"], partitioning_flavor="hive")
    pq.write_table(pa.Table.from_pylist(
        [{name: m.get(name) for name in MANIFEST_SCHEMA.names} for m in manifest], schema=MANIFEST_SCHEMA),
        out / "manifest.parquet")
    return out


def shared_server(tmp_path_factory) -> Server:
    """The one Serve application of this test process (started on first use)."""
    global _server
    with _lock:
        if _server is None:
            from drray.config import ServeConfig
            from drray.serve.run import run_server

            root = tmp_path_factory.mktemp("serve")
            model_dir = make_model_dir(root / "model")
            run_dir = make_run_dir(root / "run", model_dir)
            cfg = ServeConfig(model_dir=str(model_dir), port=free_port(), num_cpus=0.5, max_body_mb=MAX_BODY_MB,
                              max_image_pixels=MAX_IMAGE_PIXELS, max_batch_size=MAX_BATCH_SIZE,
                              batch_wait_timeout_s=BATCH_WAIT_S)
            url = run_server(model_dir, cfg, run_dir=str(run_dir), block=False)
            _server = Server(url, model_dir, run_dir)
        return _server


def release_if_last(request) -> None:
    """At a serve module's end: shut Serve down unless a later test module of this run still uses it.

    Serve holds fractional CPUs of the session's Ray; tests after the serve modules get them back.
    """
    global _server
    items = request.session.items
    here = str(request.node.path)
    positions = [i for i, item in enumerate(items) if str(item.path) == here]
    later = items[max(positions) + 1:] if positions else []
    if any(item.path.name.startswith("test_serve") for item in later):
        return
    with _lock:
        if _server is not None:
            from ray import serve

            serve.shutdown()
            _server = None


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def raw_request(url: str, head: str, body_chunks, timeout: float = 30.0) -> tuple[bytes, int]:
    """Send a request by hand; returns (the answer's first bytes, body bytes sent before the answer came)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode())
        sock.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            try:
                answer += sock.recv(65536)
                break  # the server answered before the body ended
            except BlockingIOError:
                pass
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.setblocking(True)
        deadline = time.monotonic() + timeout
        while not _complete(answer) and time.monotonic() < deadline:
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            answer += part
    return answer, sent
