"""Writing a synthetic set to disk: JPEG photographs, PNG masks, labels.csv and meta.jsonl.

Large sets render as Ray tasks (chunks of images, one CPU each) that return encoded bytes; the
driver writes every file, so workers need no shared filesystem. Each image is encoded from
(seed, index) alone, so the files are identical whether rendered in-process or by any number
of tasks, and whatever n is.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from drray.config import SynthConfig
from drray.schema import MASK_COLUMNS, MASK_TYPES, OPTIC_DISC
from drray.data.synth.render import render

log = logging.getLogger(__name__)

PARALLEL_MIN_N = 64
"""Above this many images `generate(parallel=None)` renders through Ray."""
LABEL_COLUMNS = ("image_id", "path", "label", "patient_id", "eye", *MASK_COLUMNS)


def image_id(index: int) -> str:
    return f"synth_{index:06d}"


@dataclass(frozen=True)
class Encoded:
    """One image ready to write: its labels.csv row, its files (relative path -> bytes), its meta line."""

    index: int
    row: dict[str, str]
    files: dict[str, bytes]
    meta: dict


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def encode(seed: int, index: int, cfg: SynthConfig) -> Encoded:
    """Render image `index` and encode it: JPEG at its quality, a PNG per mask type present (the disc always)."""
    im = render(seed, index, cfg)
    iid = image_id(index)
    path = f"images/{iid}.jpg"
    files = {path: _jpeg(im.image, im.jpeg_quality)}
    row = {"image_id": iid, "path": path, "label": str(im.grade), "patient_id": im.patient_id, "eye": im.eye}
    for t in MASK_TYPES:
        rel = ""
        if t == OPTIC_DISC or im.masks[t].any():
            rel = f"masks/{t}/{iid}.png"
            files[rel] = _png(im.masks[t])
        row[f"mask_{t}"] = rel
    meta = {"image_id": iid, "grade": im.grade, "eye": im.eye, "patient_id": im.patient_id,
            "jpeg_quality": im.jpeg_quality, **{k: v for k, v in im.meta.items() if k != "lesions"}}
    return Encoded(index=index, row=row, files=files, meta=meta)


def encode_chunk(seed: int, indices: list[int], cfg: SynthConfig) -> list[Encoded]:
    """The body of one Ray task: a few images in a row, on one CPU."""
    import cv2

    cv2.setNumThreads(1)  # the task holds one CPU; OpenCV's own pool would oversubscribe the node
    return [encode(seed, i, cfg) for i in indices]


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _in_process(cfg: SynthConfig) -> Iterator[Encoded]:
    from tqdm.auto import tqdm

    for i in tqdm(range(cfg.n), desc="synth", unit="img"):
        yield encode(cfg.seed, i, cfg)


def _with_ray(cfg: SynthConfig, num_cpus: float) -> Iterator[Encoded]:
    import ray

    from drray.cluster import connect

    connect()
    cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
    chunk = min(max(math.ceil(cfg.n / (4 * cpus)), 4), 64)
    chunks = _chunks(cfg.n, chunk)
    task = ray.remote(num_cpus=num_cpus)(encode_chunk)
    log.info("synth: %d images in %d Ray tasks of up to %d", cfg.n, len(chunks), chunk)
    # A bounded window of tasks in flight keeps the driver's memory flat for any n.
    window = max(2 * cpus, 2)
    pending: list = []
    for part in chunks:
        pending.append(task.remote(cfg.seed, part, cfg))
        if len(pending) >= window:
            ready, pending = ray.wait(pending, num_returns=1)
            yield from ray.get(ready[0])
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        yield from ray.get(ready[0])


def _write(out: Path, items: Iterable[Encoded], n: int) -> tuple[list[dict], list[dict]]:
    rows: list[dict | None] = [None] * n
    metas: list[dict | None] = [None] * n
    step = max(n // 10, 1)
    for done, enc in enumerate(items, start=1):
        for rel, data in enc.files.items():
            (out / rel).write_bytes(data)
        rows[enc.index] = enc.row
        metas[enc.index] = enc.meta
        if done % step == 0 or done == n:
            log.info("synth: %d/%d images written", done, n)
    return rows, metas  # type: ignore[return-value]


def generate(cfg: SynthConfig, out: str | Path, parallel: bool | None = None, num_cpus: float = 1.0) -> Path:
    """Write `cfg.n` photographs with masks and labels under `out`; returns the path of labels.csv.

    Layout: images/{image_id}.jpg, masks/{type}/{image_id}.png (types present, the disc always),
    labels.csv (image_id,path,label,patient_id,eye,mask_*; paths relative to `out`, empty cell
    when no mask) and meta.jsonl (lesion counts per type and quadrant, geometry, camera).
    parallel: True renders through Ray, False in this process, None through Ray when
    n > PARALLEL_MIN_N. num_cpus: CPUs each Ray task reserves.
    """
    out = Path(out)
    for sub in ("images", *(f"masks/{t}" for t in MASK_TYPES)):
        (out / sub).mkdir(parents=True, exist_ok=True)
    use_ray = cfg.n > PARALLEL_MIN_N if parallel is None else parallel
    log.info("synth: rendering %d images at %d px (seed %d) %s into %s", cfg.n, cfg.size, cfg.seed,
             "with Ray" if use_ray else "in this process", out)
    items = _with_ray(cfg, num_cpus) if use_ray else _in_process(cfg)
    rows, metas = _write(out, items, cfg.n)

    labels = out / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with (out / "meta.jsonl").open("w") as f:
        for meta in metas:
            f.write(json.dumps(meta, sort_keys=True) + "\n")
    log.info("synth: wrote %s", labels)
    return labels
