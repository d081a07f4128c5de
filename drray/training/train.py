"""Ray Train training of one model: datasets, class weights, the TorchTrainer, export, evaluation.

`train(cfg, out)` runs one TorchTrainer (DDP over `train.num_workers` workers; gloo on CPU, nccl
on GPU) on the manifest's train and val splits and writes the best epoch as a model dir,
`out/model`, with its validation metrics in `out/train_metrics.json`. The per-worker loop lives
in `drray.training.loop`; `drray.training.tune` runs one `build_trainer` per trial. Ray's runs and
checkpoints stay under `out/ray_results` unless `train.storage_path` names another place (an NFS
mount or s3://... that every node reaches).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from drray import storage
from drray.config import Config
from drray.rundir import RunDir
from drray.schema import NUM_GRADES

log = logging.getLogger(__name__)

SCORE_METRIC = "val_qwk"
"""What checkpoints, early stopping, ASHA and the trials table rank by (higher is better)."""


# ------------------------------------------------------------------------------------ helpers
def class_weights(labels: Sequence[int] | np.ndarray, mode: str = "weighted_loss") -> list[float] | None:
    """Inverse-frequency weight per grade, normalised to a mean of 1 per training image.

    Grades absent from the training split get weight 0 (no image ever uses it). `mode="none"`
    gives None: an unweighted loss.
    """
    if mode == "none":
        return None
    if mode != "weighted_loss":
        raise ValueError(f"train.balance must be 'weighted_loss' or 'none', got {mode!r}")
    y = np.asarray(labels, dtype=np.int64)
    if y.size == 0:
        raise ValueError("cannot weight classes of an empty training split")
    counts = np.bincount(y, minlength=NUM_GRADES).astype(np.float64)
    present = counts > 0
    w = np.zeros(NUM_GRADES)
    w[present] = y.size / (present.sum() * counts[present])
    return [float(x) for x in w]


def storage_uri(cfg: Config, out: str | os.PathLike) -> str:
    """Where Ray keeps this command's runs: `train.storage_path`, else OUT/ray_results.

    Ray wants an absolute local path or a URI that pyarrow understands (s3://, gs://, ...).
    """
    path = cfg.train.storage_path or RunDir(out).ray_results
    if storage.is_uri(path):
        return path
    return str(Path(path).expanduser().resolve())


def trial_config(cfg: Config, **params: Any) -> Config:
    """A copy of `cfg` with search parameters applied: backbone, head, lr, image_size, batch_size."""
    model = dataclasses.replace(cfg.model, backbone=params.get("backbone", cfg.model.backbone),
                                head=params.get("head", cfg.model.head))
    train = dataclasses.replace(cfg.train, lr=float(params.get("lr", cfg.train.lr)),
                                batch_size=int(params.get("batch_size", cfg.train.batch_size)))
    pre = dataclasses.replace(cfg.data.preprocess,
                              image_size=int(params.get("image_size", cfg.data.preprocess.image_size)))
    data = dataclasses.replace(cfg.data, preprocess=pre)
    return dataclasses.replace(cfg, model=model, train=train, data=data)


def check_train_config(cfg: Config) -> None:
    """What the config dataclasses cannot check without timm: errors a run would otherwise hit minutes later."""
    from drray.models.model import check_backbone_name

    m = cfg.model
    try:
        check_backbone_name(m.backbone)
    except ValueError as e:
        raise ValueError(f"model.backbone: {e}") from None
    if m.pretrained and m.pretrained_path is None:
        log.warning("model.pretrained=true downloads %s weights from the Hugging Face hub on every worker; "
                    "set model.pretrained_path to a local file on clusters without internet", m.backbone)


# ------------------------------------------------------------------------------------ datasets
@dataclass
class SplitData:
    """Ray Datasets of the train and val splits (image, label) and their manifest counts."""

    datasets: dict[str, Any]
    counts: dict[str, int]
    train_labels: np.ndarray


def _keep_readable(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop rows whose image could not be read (they are in the errors table) and keep image + label."""
    ok = batch["error_reason"] == ""
    for i in np.flatnonzero(~ok):
        log.warning("skipping image %s: %s", batch["image_id"][i], batch["error_reason"][i])
    return {"image": batch["image"][ok], "label": batch["label"][ok].astype(np.int64)}


def split_datasets(manifest: str, cfg: Config, splits: Sequence[str] = ("train", "val")) -> SplitData:
    """Labelled rows of each split as Ray Datasets, decoded at `cfg.data.preprocess.image_size`."""
    from drray.data.dataset import build_dataset, load_manifest

    df = load_manifest(manifest)
    labelled = df[df["label"].notna()]
    counts = {s: int((labelled["split"] == s).sum()) for s in splits}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"manifest {manifest} has no labelled images in split(s) {', '.join(empty)} "
                         f"(counts {counts}); re-run `drray ingest` with data.split_fractions giving each a share")
    datasets = {}
    for s in splits:
        ds = build_dataset(manifest, cfg.data.preprocess, split=s, labelled_only=True,
                           num_cpus=cfg.data.decode_cpus, max_pixels=cfg.data.max_image_pixels)
        # Same num_cpus as the decode step, so Ray Data fuses both into one task per block.
        ds = ds.map_batches(_keep_readable, batch_format="numpy", num_cpus=cfg.data.decode_cpus)
        # Rows in manifest order, not in the order decode tasks finish: with the seeded shuffle of each
        # epoch (drray.training.loop.epoch_seed), one config then trains one model.
        ds.context.execution_options.preserve_order = True
        if cfg.train.materialize:
            ds = ds.materialize()
            kept = ds.count()
            if kept == 0:
                raise ValueError(f"none of the {counts[s]} images of split {s!r} in {manifest} could be read; "
                                 "see the warnings above and ingest_errors.parquet")
            if kept < counts[s]:
                log.warning("split %s: %d of %d images unreadable, training without them",
                            s, counts[s] - kept, counts[s])
            counts[s] = kept
        datasets[s] = ds
    train_labels = labelled.loc[labelled["split"] == "train", "label"].to_numpy(dtype=np.int64)
    return SplitData(datasets, counts, train_labels)


# ------------------------------------------------------------------------------------ trainer
def loop_config(cfg: Config, data: SplitData) -> dict[str, Any]:
    """What `drray.training.loop.worker_loop` receives: plain, serialisable values only."""
    return {
        "config": cfg.to_dict(),
        "class_weights": class_weights(data.train_labels, cfg.train.balance),
        "n_train": data.counts["train"],
    }


def build_trainer(cfg: Config, data: SplitData, *, name: str, storage_path: str, callbacks: list | None = None):
    """One TorchTrainer over `data` (keeps the best checkpoint by val QWK and the latest, for resume)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from drray.training.loop import worker_loop

    t = cfg.train
    resources = {"CPU": float(t.cpus_per_worker)}
    if t.use_gpu:
        resources["GPU"] = float(t.gpus_per_worker)
    return TorchTrainer(
        worker_loop,
        train_loop_config=loop_config(cfg, data),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            # The latest checkpoint is always kept too, so a restarted run resumes where it stopped.
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=SCORE_METRIC,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            callbacks=callbacks or [],
        ),
        datasets=data.datasets,
        dataset_config=DataConfig(execution_options=_ordered_ingest()),
    )


def _ordered_ingest():
    """Ray Train's default ingest options with the order kept: each rank gets the same rows every run."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def export_model(checkpoint: Any, out_dir: str | os.PathLike) -> str:
    """Copy the model dir inside a checkpoint to `out_dir` (local path or URI), replacing what was there.

    checkpoint: a `ray.train.Checkpoint` (it knows its filesystem, also for s3://) or a checkpoint URI.
    """
    from ray.train import Checkpoint

    from drray.models.card import CARD_FILE, WEIGHTS_FILE
    from drray.models.model import read_model_files

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(str(checkpoint))
    with tempfile.TemporaryDirectory(prefix="drray_export_") as tmp:
        ckpt.to_directory(tmp)
        files = read_model_files(tmp)  # fails clearly on a checkpoint that holds no model dir
        if storage.is_uri(out_dir):
            storage.write_bytes(storage.join(out_dir, WEIGHTS_FILE), files.weights)
            storage.write_bytes(storage.join(out_dir, CARD_FILE), files.card)
            return str(out_dir)
        # Locally the whole folder is swapped in one rename: no reader sees a half-copied model dir.
        out = Path(out_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            for name in (WEIGHTS_FILE, CARD_FILE):
                shutil.copyfile(Path(tmp) / name, staging / name)
            if out.exists():
                shutil.rmtree(out)
            staging.rename(out)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return str(out)


# ------------------------------------------------------------------------------------ train
@dataclass
class TrainResult:
    """What `train` wrote: the model dir, the best epoch's metrics and the per-epoch history."""

    model_dir: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_path: str = ""
    run_path: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.metrics
        lines = [f"best epoch {m.get('epoch')} of {len(self.history)}: val QWK {_fmt(m.get('qwk'))}, "
                 f"accuracy {_fmt(m.get('accuracy'))}, referable AUC {_fmt(m.get('referable_auc'))}",
                 f"model dir: {self.model_dir}", f"run: {self.run_path} ({self.seconds:.0f}s)"]
        return "\n".join(lines)


def _fmt(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4f}"


def _read_checkpoint_json(checkpoint: Any, name: str) -> dict[str, Any]:
    """A JSON file inside a `ray.train.Checkpoint` (local or remote)."""
    with checkpoint.as_directory() as d:
        return storage.read_json(Path(d) / name)


def train(cfg: Config, out: str | os.PathLike, manifest: str | None = None) -> TrainResult:
    """Train one model with Ray Train; write `out/model` (best epoch by val QWK) and `out/train_metrics.json`."""
    from drray.cluster import connect
    from drray.models.card import CARD_FILE
    from drray.training.loop import TRAIN_STATE_FILE

    check_train_config(cfg)
    manifest = str(manifest or cfg.data.manifest)
    run = RunDir(out)
    storage.make_dirs(run.root)
    connect()
    start = time.perf_counter()
    data = split_datasets(manifest, cfg)
    log.info("training %s (%s head) on %d images, validating on %d", cfg.model.backbone, cfg.model.head,
             data.counts["train"], data.counts["val"])
    name = f"drray_train_{time.strftime('%Y%m%d-%H%M%S')}_{os.path.basename(run.root.rstrip('/'))}"
    trainer = build_trainer(cfg, data, name=name, storage_path=storage_uri(cfg, run.root))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    best = result.get_best_checkpoint(metric=SCORE_METRIC, mode="max")
    if best is None:
        raise RuntimeError(f"run {result.path} reported no checkpoint; see its logs")
    model_dir = export_model(best, run.model)
    metrics = _read_checkpoint_json(best, CARD_FILE).get("metrics", {})
    history = _read_checkpoint_json(result.checkpoint, TRAIN_STATE_FILE)["history"]
    storage.write_json(run.train_metrics, {"best": metrics, "history": history, "config": cfg.to_dict(),
                                           "checkpoint_path": best.path})
    return TrainResult(model_dir, metrics, history, best.path, result.path, time.perf_counter() - start)
