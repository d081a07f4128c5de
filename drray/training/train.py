"""Ray Train training of one model: datasets, class weights, the TorchTrainer, export, evaluation.

`train(cfg, out)` runs one TorchTrainer (DDP over `train.num_workers` workers; gloo on CPU, nccl
on GPU) on the manifest's train and val splits and writes the best epoch as a model dir,
`out/model`, with its validation metrics in `out/train_metrics.json`. The per-worker loop lives
in `drray.training.loop`; `drray.training.tune` runs one `build_trainer` per trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from drray.config import Config, PreprocessConfig
from drray.schema import NUM_GRADES

log = logging.getLogger(__name__)

MODEL_DIR = "model"
TRAIN_METRICS_FILE = "train_metrics.json"
SCORE_METRIC = "val_qwk"


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


def storage_uri(path: str) -> str:
    """Ray wants an absolute local path or a URI that pyarrow understands (s3://, gs://, ...)."""
    if "://" in path:
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
    """Errors a run would otherwise hit minutes later, inside a Ray worker."""
    import difflib

    import timm

    t, m = cfg.train, cfg.model
    if not timm.is_model(m.backbone):
        close = difflib.get_close_matches(m.backbone, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"model.backbone {m.backbone!r} is not a timm model name"
                         + (f"; close matches: {', '.join(close)}" if close else "; see timm.list_models('pattern*')"))
    if m.pretrained and m.pretrained_path is None:
        log.warning("model.pretrained=true downloads %s weights from the Hugging Face hub on every worker; "
                    "set model.pretrained_path to a local file on clusters without internet", m.backbone)
    if t.cpus_per_worker <= 0:
        raise ValueError(f"train.cpus_per_worker must be > 0, got {t.cpus_per_worker}")
    if t.use_gpu and t.gpus_per_worker <= 0:
        raise ValueError(f"train.use_gpu is true but train.gpus_per_worker is {t.gpus_per_worker}; "
                         "give each worker > 0 GPUs")
    if t.max_failures < -1:
        raise ValueError(f"train.max_failures must be -1 (retry forever), 0 or more, got {t.max_failures}")
    if t.limit_train_batches is not None and t.limit_train_batches < 1:
        raise ValueError(f"train.limit_train_batches must be >= 1 or null, got {t.limit_train_batches}")
    if t.warmup_epochs < 0 or not 0 <= t.label_smoothing < 1:
        raise ValueError(f"train.warmup_epochs must be >= 0 and train.label_smoothing in [0, 1), "
                         f"got {t.warmup_epochs} and {t.label_smoothing}")


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
                           num_cpus=cfg.data.num_cpus_per_decode_task, max_pixels=cfg.data.max_image_pixels)
        # Same num_cpus as the decode step, so Ray Data fuses both into one task per block.
        ds = ds.map_batches(_keep_readable, batch_format="numpy", num_cpus=cfg.data.num_cpus_per_decode_task)
        if cfg.train.materialize:
            ds = ds.materialize()
            kept = ds.count()
            if kept == 0:
                raise ValueError(f"none of the {counts[s]} images of split {s!r} in {manifest} could be read; "
                                 "see the warnings above and errors.parquet")
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
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
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
    )


def export_model(checkpoint_path: str, out_dir: str | Path) -> Path:
    """Copy the model dir inside a checkpoint (local path or URI) to `out_dir`, replacing what was there."""
    from ray.train import Checkpoint

    from drray.training.loop import TRAIN_STATE_FILES

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            Checkpoint(checkpoint_path).to_directory(tmp)
            for f in Path(tmp).iterdir():
                if f.name not in TRAIN_STATE_FILES:
                    shutil.move(str(f), staging / f.name)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def _json_ready(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively: strict JSON for metrics files."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(_json_ready(obj), indent=2, allow_nan=False))
    return path


# ------------------------------------------------------------------------------------ train
@dataclass
class TrainResult:
    """What `train` wrote: the model dir, the best epoch's metrics and the per-epoch history."""

    model_dir: Path
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


def _read_checkpoint_json(checkpoint_path: str, name: str) -> dict[str, Any]:
    from ray.train import Checkpoint

    with Checkpoint(checkpoint_path).as_directory() as d:
        return json.loads((Path(d) / name).read_text())


def train(cfg: Config, out: Path, manifest: str | None = None) -> TrainResult:
    """Train one model with Ray Train; write `out/model` (best epoch by val QWK) and `out/train_metrics.json`."""
    from drray.cluster import connect
    from drray.models.card import CARD_FILE
    from drray.training.loop import TRAIN_STATE_FILE

    check_train_config(cfg)
    manifest = str(manifest or cfg.data.manifest)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    connect()
    start = time.perf_counter()
    data = split_datasets(manifest, cfg)
    log.info("training %s (%s head) on %d images, validating on %d", cfg.model.backbone, cfg.model.head,
             data.counts["train"], data.counts["val"])
    name = f"drray_train_{time.strftime('%Y%m%d-%H%M%S')}_{out.resolve().name}"
    trainer = build_trainer(cfg, data, name=name, storage_path=storage_uri(cfg.train.storage_path))
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    best = result.get_best_checkpoint(metric=SCORE_METRIC, mode="max")
    if best is None:
        raise RuntimeError(f"run {result.path} reported no checkpoint; see its logs")
    model_dir = export_model(best.path, out / MODEL_DIR)
    card = json.loads((model_dir / CARD_FILE).read_text())
    history = _read_checkpoint_json(result.checkpoint.path, TRAIN_STATE_FILE)["history"]
    metrics = card.get("metrics", {})
    write_json(out / TRAIN_METRICS_FILE, {"best": metrics, "history": history, "config": cfg.to_dict(),
                                          "checkpoint_path": best.path})
    return TrainResult(model_dir, metrics, history, best.path, result.path, time.perf_counter() - start)


# ------------------------------------------------------------------------------------ evaluate
def evaluate(model_dir: str | Path, manifest: str, split: str = "test", batch_size: int = 32,
             num_cpus: float = 1.0) -> dict[str, Any]:
    """Metrics of a model dir on one split of a manifest (decoded with the model's own preprocessing)."""
    import torch

    from drray.data.dataset import build_dataset
    from drray.evaluate.metrics import classification_report
    from drray.models.model import load_model

    model = load_model(model_dir)
    model.eval()
    prep: PreprocessConfig = model.card.preprocess_config()
    ds = build_dataset(manifest, prep, split=split, labelled_only=True, num_cpus=num_cpus)
    outs, labels, skipped = [], [], 0
    with torch.no_grad():
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            ok = batch["error_reason"] == ""
            skipped += int((~ok).sum())
            if not ok.any():
                continue
            x = model.normalize(torch.from_numpy(np.require(batch["image"][ok], requirements=["C", "W"])))
            outs.append(model(x).float())
            labels.append(batch["label"][ok].astype(np.int64))
    if not outs:
        raise ValueError(f"no readable labelled image in split {split!r} of {manifest}")
    out = torch.cat(outs)
    y = np.concatenate(labels)
    report = classification_report(y, model.grade_probs(out).numpy(), preds=model.predict(out).numpy())
    return {"split": split, "model_dir": str(model_dir), "model_id": model.card.model_id,
            "skipped_unreadable": skipped, **report}
