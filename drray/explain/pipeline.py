"""`drray explain`: predictions, CAM maps and localisation scores for every image of a manifest, on Ray Data.

The pipeline streams; nothing is collected to the driver:

    manifest rows --(tasks: read, decode, preprocess; data.build_dataset)--> images (+ lesion masks)
        --(actor pool: a drray.inference.Predictor each, drray.explain.actor.BatchExplainer)--> one row per image and method
        --(write tasks: drray.explain.sink)--> OUT/explanations/dataset=D/split=S/*.parquet
                                               OUT/explain_errors/*.parquet

The model dir is read once on the driver (local path or URI) and its bytes travel to the actors
through Ray's object store, so worker nodes need not see the driver's filesystem; images and
masks, on the other hand, are read by decode tasks on any node: keep them on shared storage
(a filesystem every node mounts, or object storage).

Rerunning the same command skips what is already there: the (image_id, cam_method, model_id)
keys of OUT/explanations and the (image_id, model_id) keys of OUT/explain_errors are read first
(three small columns, not the maps) and the manifest is filtered before anything is decoded. An
image recorded as an error is not retried; delete OUT/explain_errors/ to retry all of them.
Passing `methods=()` predicts only (one row per image, no map): the cheapest way to grade an archive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd

from drray import storage
from drray.config import CamConfig, ExplainConfig
from drray.data.images import DEFAULT_MAX_PIXELS
from drray.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class ExplainResult:
    """What one `explain` call did."""

    out: str
    model_id: str
    methods: list[str]
    """CAM methods asked for; empty when predicting only."""
    run_id: str
    images: int = 0
    """Images sent through the pipeline (those with something left to do)."""
    rows_written: int = 0
    """Explanation rows written (one per image and method)."""
    skipped_done: int = 0
    """(image, method) rows skipped because OUT/explanations already has them."""
    skipped_failed: int = 0
    """Images skipped because OUT/explain_errors already records them for this model."""
    errors: dict[str, int] = field(default_factory=dict)
    """Error rows written, by reason code."""
    seconds: float = 0.0
    sanity: Any = None
    """The model-randomisation check (drray.explain.randomisation.SanityResult), when it ran."""

    @property
    def explanations_dir(self) -> str:
        return RunDir(self.out).explanations

    @property
    def errors_dir(self) -> str:
        return RunDir(self.out).explain_errors

    def summary(self) -> str:
        what = ", ".join(self.methods) if self.methods else "predictions only"
        n_err = sum(self.errors.values())
        lines = [
            f"explained {self.images:,} images ({what}; model {self.model_id}) in {self.seconds:.1f} s",
            f"  wrote {self.rows_written:,} rows to {self.explanations_dir}",
            f"  skipped {self.skipped_done:,} rows already written and {self.skipped_failed:,} images "
            f"already in {self.errors_dir}",
        ]
        if n_err:
            by_reason = ", ".join(f"{r}: {n}" for r, n in sorted(self.errors.items()))
            lines.append(f"  {n_err:,} new error rows ({by_reason}) in {self.errors_dir}")
        else:
            lines.append("  no new errors")
        if self.sanity is not None:
            corr = ", ".join(f"{k} {v:.2f}" for k, v in self.sanity.mean_rank_corr.items() if k != "trained")
            lines.append(f"  randomisation check on {self.sanity.images} images (rank correlation with the trained "
                         f"maps as blocks are re-initialised: {corr}) in {self.sanity.path}")
        return "\n".join(lines)


def _read_keys(location: str, columns: list[str], model_id: str) -> pd.DataFrame:
    """Key columns of the rows of `model_id` in a Parquet directory (an empty frame when there is none)."""
    import pyarrow.dataset as pads
    from pyarrow import fs as pafs

    from drray.storage import filesystem

    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return pd.DataFrame(columns=columns)
    dataset = pads.dataset(path, format="parquet", filesystem=fs, partitioning="hive")
    if not dataset.files:
        return pd.DataFrame(columns=columns)
    return dataset.to_table(columns=columns, filter=pads.field("model_id") == model_id).to_pandas()


def plan_work(
    manifest: pd.DataFrame,
    methods: Sequence[str],
    done: pd.DataFrame,
    failed: pd.DataFrame,
) -> tuple[dict[tuple[str, ...], pd.DataFrame], int, int]:
    """Split the manifest by what is left to do per image.

    methods: CAM methods; empty means predict only (rows whose cam_method is null).
    done: (image_id, cam_method) already written; failed: image_id already in the errors table.
    Returns ({methods left: manifest rows needing exactly those}, rows skipped, images skipped).
    Normally every image needs all methods, or none, so there is a single group.
    """
    wanted = list(methods) if methods else [""]
    key = done["cam_method"].fillna("") if len(done) else pd.Series([], dtype=object)
    have = set(zip(done["image_id"], key)) if len(done) else set()
    failed_ids = set(failed["image_id"]) if len(failed) else set()
    skipped_failed = int(manifest["image_id"].isin(failed_ids).sum())
    todo = manifest[~manifest["image_id"].isin(failed_ids)]
    skipped_done = 0
    left = []
    for image_id in todo["image_id"]:
        missing = tuple(m for m in wanted if (image_id, m) not in have)
        skipped_done += len(wanted) - len(missing)
        left.append(missing)
    groups: dict[tuple[str, ...], pd.DataFrame] = {}
    if len(todo):
        keyed = todo.assign(_left=left)
        for missing, rows in keyed.groupby("_left", sort=False):
            if missing:
                groups[tuple(m for m in missing if m)] = rows.drop(columns="_left").reset_index(drop=True)
    return groups, skipped_done, skipped_failed


def explain(
    manifest: str | os.PathLike | pd.DataFrame,
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    methods: Sequence[str] | None = None,
    cam: CamConfig | None = None,
    job: ExplainConfig | None = None,
    split: str | list[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_cpus: float = 0.5,
    console: Any = None,
) -> ExplainResult:
    """Predict, explain and score every image of `manifest` with the model in `model_dir`, into `out`.

    methods: CAM methods (`drray.CAM_METHODS`); None takes `cam.methods`, else the model card's chosen
        method, else gradcam; () predicts only.
    cam: what a map is: method, target, layer, stored size, pointing tolerance (`CamConfig`).
    job: how the job runs: actors, their resources, the randomisation check (`ExplainConfig`).
    split: one split or a list of splits of the manifest; None explains every image.
    max_pixels: images above this many pixels become `image_too_large` errors (data.max_image_pixels).
    decode_cpus: CPUs per decode task (data.decode_cpus).
    console: a `drray.console.Console` showing one progress bar (images, images/s).
    out: a run directory (local or a pyarrow URI such as s3://...): writes out/explanations/ and
        out/explain_errors/.
    """
    import ray

    from drray.cam.methods import get_method
    from drray.cluster import connect
    from drray.data.dataset import build_dataset, load_manifest
    from drray.explain.actor import BatchExplainer
    from drray.explain.progress import ExplainProgress
    from drray.explain.sample import absolute_paths
    from drray.inference import default_methods
    from drray.explain.sink import ExplanationSink, remove_empty_dir
    from drray.models.model import read_model_files
    from drray.storage import filesystem

    cam = cam or CamConfig()
    job = job or ExplainConfig()
    files = read_model_files(model_dir)
    card = files.read_card()  # the driver never builds the network
    methods = [get_method(m).name for m in default_methods(card, cam.methods if methods is None else methods)]
    if len(set(methods)) != len(methods):
        raise ValueError(f"CAM methods repeat: {methods}")
    run = RunDir(out)
    fs, _ = filesystem(out)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    result = ExplainResult(out=str(out), model_id=card.model_id, methods=methods, run_id=run_id)
    start = time.perf_counter()

    df = load_manifest(manifest, split)
    done = _read_keys(run.explanations, ["image_id", "cam_method"], card.model_id)
    failed = _read_keys(run.explain_errors, ["image_id"], card.model_id)
    groups, result.skipped_done, result.skipped_failed = plan_work(df, methods, done, failed)
    log.info("explain run %s: %d images in the manifest, %d rows already written, %d images already failed",
             run_id, len(df), result.skipped_done, result.skipped_failed)

    if groups:
        connect()
        model_ref = ray.put(files)
    errors: Counter = Counter()
    total = sum(len(rows) for rows in groups.values())
    progress = ExplainProgress(console, total) if console is not None and groups else None
    prep = card.preprocess_config()
    for k, (todo_methods, rows) in enumerate(groups.items()):
        log.info("explaining %d images with %s", len(rows), ", ".join(todo_methods) or "predictions only")
        ds = build_dataset(absolute_paths(rows, manifest), prep, with_masks=True, max_pixels=max_pixels,
                           batch_size=job.batch_size, num_cpus=decode_cpus, photo_size=cam.overlay_size)
        gpus = {"num_gpus": job.gpus_per_actor} if job.gpus_per_actor > 0 else {}
        ds = ds.map_batches(
            BatchExplainer,
            fn_constructor_kwargs=dict(model=model_ref, methods=list(todo_methods), cam=cam, job=job,
                                       max_pixels=max_pixels,
                                       progress=progress.counter if progress is not None else None),
            batch_size=int(job.batch_size),  # an integer: required with GPU actors
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=job.num_actors),
            num_cpus=job.cpus_per_actor,
            resources=dict(job.actor_resources) or None,
            **gpus,
        )
        sink = ExplanationSink(out, f"{run_id}-{k}")
        # Writing is light (Parquet encoding): a small CPU share keeps it from starving decode tasks,
        # and one writer per actor keeps up without spawning a worker process per free CPU share.
        with progress or contextlib.nullcontext():
            ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.25}, concurrency=job.num_actors)
        result.images += len(rows)
        result.rows_written += sink.stats.rows
        errors.update(sink.stats.errors)
    result.errors = dict(errors)
    remove_empty_dir(fs, filesystem(run.staging)[1])
    if job.sanity_images and methods and (result.rows_written or not storage.is_file(run.randomisation)):
        from drray.explain.randomisation import randomisation_check

        result.sanity = randomisation_check(absolute_paths(df, manifest), files, out, methods=methods, cam=cam,
                                            job=job, max_pixels=max_pixels)
    result.seconds = time.perf_counter() - start
    log.info("explain run %s done: %d rows, %d errors in %.1f s", run_id, result.rows_written,
             sum(result.errors.values()), result.seconds)
    return result
