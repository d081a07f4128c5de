"""Decoding every candidate image (and its masks) once, in-process or in Ray tasks.

Only decoding a whole file catches a truncated one, and it yields width/height (as stored) for
the manifest. JPEGs are decoded at 1/8 scale (drray.data.images.probe): every scan is still
entropy-decoded, so truncation fails alike, at about a quarter of the CPU time of a 12-Mpx file.
Results are plain tuples so they travel through Ray's object store cheaply:
`(width, height, image_error, mask_errors)` with `image_error` None or `(reason, detail)` and
`mask_errors` a list of `(column, reason, detail)`.
"""

from __future__ import annotations

import logging
import time

from drray.data.images import ImageError, probe, read_mask
from drray.schema import Reason

log = logging.getLogger(__name__)

CHUNK = 64
"""Images per Ray task: enough work to amortise a task's overhead, small enough to balance."""
PARALLEL_ABOVE = 256
"""`parallel=None` probes in Ray tasks above this many images, in-process otherwise."""
TASK_CPUS = 0.5
"""Decoding waits on disk as much as on the CPU: two tasks per core."""

Item = tuple[str, list[tuple[str, str]]]  # (image path, [(mask column, mask path), ...])
Result = tuple[int | None, int | None, tuple[str, str] | None, list[tuple[str, str, str]]]


def probe_one(path: str, masks: list[tuple[str, str]], max_pixels: int) -> Result:
    """Decode one image and its masks; never raises."""
    try:
        width, height = probe(path, max_pixels)
    except ImageError as e:
        return None, None, (e.reason, e.detail), []
    except OSError as e:  # permissions, I/O errors: the bytes could not be read
        return None, None, (Reason.MISSING_FILE, f"{path} cannot be read: {e}"), []
    except Exception as e:  # a decoder bug on hostile bytes must not stop the run
        return None, None, (Reason.CORRUPT_IMAGE, f"{path}: {type(e).__name__}: {e}"), []
    mask_errors = []
    for col, mask_path in masks:
        try:
            read_mask(mask_path)
        except ImageError as e:
            mask_errors.append((col, e.reason, e.detail))
        except OSError as e:
            mask_errors.append((col, Reason.MASK_MISSING, f"{mask_path} cannot be read: {e}"))
        except Exception as e:
            mask_errors.append((col, Reason.MASK_UNREADABLE, f"{mask_path}: {type(e).__name__}: {e}"))
    return width, height, None, mask_errors


def probe_chunk(items: list[Item], max_pixels: int) -> list[Result]:
    """`probe_one` over a chunk (the body of one Ray task)."""
    return [probe_one(path, masks, max_pixels) for path, masks in items]


def _in_process(items: list[Item], max_pixels: int) -> list[Result]:
    out: list[Result] = []
    step = max(CHUNK, len(items) // 10)
    for start in range(0, len(items), step):
        out += probe_chunk(items[start:start + step], max_pixels)
        log.info("probed %d/%d images", len(out), len(items))
    return out


def _in_ray(items: list[Item], max_pixels: int) -> list[Result]:
    import ray

    from drray.cluster import connect

    connect()
    task = ray.remote(num_cpus=TASK_CPUS)(probe_chunk)
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    index = {task.remote(chunk, max_pixels): k for k, chunk in enumerate(chunks)}
    results: list[list[Result] | None] = [None] * len(chunks)
    pending, done, last_log = list(index), 0, time.monotonic()
    log.info("probing %d images in %d Ray tasks of up to %d", len(items), len(chunks), CHUNK)
    while pending:
        ready, pending = ray.wait(pending, num_returns=len(pending), timeout=10.0)
        for ref in ready:
            k = index[ref]
            try:
                results[k] = ray.get(ref)
            except ray.exceptions.RayError as e:
                # A lost worker should cost time, not rows: redo that chunk here.
                log.warning("probe task for images %d-%d failed (%s); probing them in-process",
                            k * CHUNK, k * CHUNK + len(chunks[k]) - 1, e)
                results[k] = probe_chunk(chunks[k], max_pixels)
            done += len(chunks[k])
        if time.monotonic() - last_log > 10.0 or not pending:
            log.info("probed %d/%d images", done, len(items))
            last_log = time.monotonic()
    return [r for chunk in results for r in chunk]  # type: ignore[union-attr]


def probe_records(items: list[Item], max_pixels: int, parallel: bool | None = None) -> list[Result]:
    """One `Result` per item, in order; `parallel` None = Ray above `PARALLEL_ABOVE` images."""
    if not items:
        return []
    use_ray = len(items) > PARALLEL_ABOVE if parallel is None else parallel
    return _in_ray(items, max_pixels) if use_ray else _in_process(items, max_pixels)
