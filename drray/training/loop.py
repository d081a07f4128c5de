"""The Ray Train loop that runs on every worker (DDP rank): epochs, validation, checkpoints, resume.

Each epoch reads the worker's shard of the `train` and `val` Ray Datasets, trains with batched
augmentation on the worker's device, gathers validation outputs from every rank and reports one
row of metrics (QWK first) with a checkpoint. A checkpoint is a model dir (`save_model`) plus the
optimiser and loop state, so the best one exports as a model dir as it is, and a restarted run
(FailureConfig, Tune resume) continues from the latest one.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from drray.config import Config

log = logging.getLogger(__name__)

TRAIN_STATE_FILE = "train_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAIN_STATE_FILES = (TRAIN_STATE_FILE, OPTIMIZER_FILE)
"""Files a checkpoint holds besides the model dir; left out when a checkpoint is exported."""

PLACEMENT_GROUP_METRIC = "placement_group"
"""Hex id of the worker group's placement group, reported so a stopped Tune trial's can be released."""

VAL_METRICS = ("qwk", "accuracy", "macro_f1", "referable_auc", "sensitivity", "specificity", "ece",
               "qwk_ci_low", "qwk_ci_high")
_VAL_BOOTSTRAP = 200  # resamples for the per-epoch QWK interval: enough for a rough band, cheap


def lr_factor(step: int, warmup_steps: int, total_steps: int, floor: float = 0.01) -> float:
    """Linear warm-up to 1, then cosine decay to `floor` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def save_optimizer(optimizer, path: Path) -> None:
    """Optimiser state as safetensors (tensors) + JSON (hyper-parameters): no pickle in a checkpoint."""
    from safetensors.torch import save_file
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            name = f"{idx}/{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    save_file(tensors, str(path), metadata=meta)


def load_optimizer(optimizer, path: Path, device) -> None:
    """Inverse of `save_optimizer`."""
    from safetensors import safe_open

    state: dict[int, dict[str, Any]] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata()
        for name in f.keys():
            idx, key = name.split("/", 1)
            state.setdefault(int(idx), {})[key] = f.get_tensor(name).to(device)
    for name, value in json.loads(meta["scalars"]).items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    for s in state.values():
        # Adam keeps `step` on the CPU unless it runs capturable/fused.
        if "step" in s and hasattr(s["step"], "cpu"):
            s["step"] = s["step"].cpu()
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})


@functools.cache
def _collate_class():
    from ray.data.collate_fn import NumpyBatchCollateFn

    class ToTensors(NumpyBatchCollateFn):
        """numpy batch -> {"image": uint8 (B, S, S, 3), "label": int64 (B,)} tensors; Ray moves them to the device."""

        def __call__(self, batch: dict[str, np.ndarray]):
            import torch

            return {
                # Ray hands out read-only views of the object store; torch wants writable memory.
                "image": torch.from_numpy(np.require(batch["image"], requirements=["C", "W"])),
                "label": torch.from_numpy(batch["label"].astype(np.int64)),
            }

    return ToTensors


def _collate():
    return _collate_class()()


def _unwrap(model):
    return getattr(model, "module", model)


def _loss(outputs, labels, head: str, class_weights, label_smoothing: float = 0.0):
    """Weighted cross-entropy (classification) or weighted SmoothL1 on the grade (ordinal)."""
    import torch.nn.functional as F

    if head == "ordinal":
        per = F.smooth_l1_loss(outputs[:, 0].float(), labels.float(), reduction="none")
        if class_weights is None:
            return per.mean()
        w = class_weights[labels]
        return (per * w).sum() / w.sum().clamp_min(1e-8)
    return F.cross_entropy(outputs.float(), labels, weight=class_weights, label_smoothing=label_smoothing)


def _autocast(device):
    import contextlib

    import torch

    # bf16 needs no loss scaling; CPU autocast is slower than fp32 for these convnets, so GPU only.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _gather(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Concatenate per-rank numpy arrays across the DDP group (identity with one worker)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return arrays
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, arrays)
    return [np.concatenate([r[i] for r in everyone]) for i in range(len(arrays))]


SCORE_ARGMAX = "val QWK of the argmax grade"
SCORE_CROSS_FITTED = "val QWK with ordinal thresholds cross-fitted on two halves of validation"
SCORE_IN_SAMPLE = "val QWK with ordinal thresholds fitted on all of validation (too few images to cross-fit)"


def _ordinal_grades(scores: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """Validation grades of an ordinal head for scoring, and how they were obtained (see SCORE_*)."""
    from drray.models.ordinal import cross_fitted_grades, fit_ordinal_thresholds, grades_from_scores

    if y.size >= 8:
        return cross_fitted_grades(scores, y, folds=2, seed=seed), SCORE_CROSS_FITTED
    return grades_from_scores(scores, fit_ordinal_thresholds(scores, y)), SCORE_IN_SAMPLE


def validate(model, shard, device, batch_size: int, head: str, seed: int = 0) -> dict[str, Any]:
    """Forward the whole validation split (all ranks), calibrate an ordinal head, compute the metrics.

    An ordinal head's thresholds are fitted on validation: scoring it with those same thresholds
    would flatter it against a classification head, so its QWK (what checkpoints and trials are
    ranked by) uses thresholds cross-fitted on the other half; the checkpoint keeps thresholds
    fitted on all of it. `score_method` in the metrics says which applied.
    """
    import torch

    from drray.scores.grading import classification_report
    from drray.inference import forward_outputs, read_outputs
    from drray.models.ordinal import fit_ordinal_temperature, fit_ordinal_thresholds

    core = _unwrap(model)
    core.eval()
    amp = torch.bfloat16 if device.type == "cuda" else None
    outs, labels = [], []
    for batch in shard.iter_torch_batches(batch_size=batch_size, collate_fn=_collate()):
        outs.append(forward_outputs(core, batch["image"], device, amp).numpy())
        labels.append(batch["label"].cpu().numpy())
    n_out = core.card.num_outputs
    out = np.concatenate(outs) if outs else np.zeros((0, n_out), np.float32)
    y = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
    out, y = _gather([out, y])
    if y.size == 0:
        raise ValueError("the validation split is empty after dropping unreadable images; "
                         "check the manifest's `split` column and the errors table")
    out_t, y_t = torch.from_numpy(out), torch.from_numpy(y)
    val_loss = float(_loss(out_t, y_t, head, None))
    if head == "ordinal":
        preds, score_method = _ordinal_grades(out[:, 0], y, seed)
        # Cut points and temperature fitted on all of validation travel with the checkpoint's card.
        thresholds = fit_ordinal_thresholds(out[:, 0], y)
        core.set_ordinal_calibration(thresholds, fit_ordinal_temperature(out[:, 0], y, thresholds))
        probs, _ = read_outputs(core, out_t)
    else:
        probs, preds = read_outputs(core, out_t)
        score_method = SCORE_ARGMAX
    report = classification_report(y, probs, preds=preds, n_boot=_VAL_BOOTSTRAP)
    report["score_method"] = score_method
    metrics = {f"val_{k}": (math.nan if report[k] is None else report[k]) for k in VAL_METRICS}
    metrics["val_loss"] = val_loss
    metrics["val_n"] = int(y.size)
    metrics["score_method"] = score_method
    return {"metrics": metrics, "report": report}


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one worker's epoch (batch order and augmentation): fixed by the run's seed alone.

    Two runs of one config train the same model (Ray Data's local shuffle is otherwise seeded
    from the clock). Derived afresh each epoch rather than carried over from the last, so a run
    resumed from a checkpoint after epoch k sees epoch k + 1's batches and augmentations as an
    uninterrupted run does.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def train_step(model, optimizer, images, labels, *, lr: float, class_weights=None, label_smoothing: float = 0.0,
               augment: bool = True, generator=None):
    """One optimiser step on a batch of prepared uint8 images (B, S, S, 3) and their grades; returns the loss.

    The model's own normalisation (`to_unit`, then `standardize` with the card's mean and std) with
    the fundus augmentation between the two, the learning rate set for this step, bf16 autocast on
    CUDA, the head's loss (weighted cross-entropy, or SmoothL1 on the grade for an ordinal head).
    `model` may be wrapped for DDP. The Ray Train loop and benchmarks/cam_validity.py train with it.
    """
    from drray.models.model import to_unit
    from drray.training.augment import augment as augment_batch

    core = _unwrap(model)
    x = to_unit(images).contiguous()  # augmentation and the training forward run on NCHW memory
    if augment:
        x = augment_batch(x, generator=generator)
    x = core.standardize(x)
    for g in optimizer.param_groups:  # layer-wise decay scales each group (drray.training.optim)
        g["lr"] = lr * g.get("lr_scale", 1.0)
    with _autocast(x.device):
        outputs = model(x)
    loss = _loss(outputs, labels, core.card.head, class_weights, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_epoch(model, optimizer, shard, device, *, cfg: Config, class_weights, step: int,
                total_steps: int, warmup_steps: int, drop_last: bool, generator,
                shuffle_seed: int | None = None) -> dict[str, Any]:
    """One pass over this worker's training shard; returns loss, images and the next global step."""
    model.train()
    t, bs = cfg.train, cfg.train.batch_size
    loss_sum, seen, batches = 0.0, 0, 0
    start = time.perf_counter()
    it = shard.iter_torch_batches(
        batch_size=bs, collate_fn=_collate(), drop_last=drop_last, prefetch_batches=2,
        local_shuffle_buffer_size=bs * 4, local_shuffle_seed=shuffle_seed,
    )
    for batch in it:
        if t.limit_train_batches is not None and batches >= t.limit_train_batches:
            break
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        loss = train_step(model, optimizer, images, labels, lr=t.lr * lr_factor(step, warmup_steps, total_steps),
                          class_weights=class_weights, label_smoothing=t.label_smoothing, augment=t.augment,
                          generator=generator)
        loss_sum += float(loss) * labels.shape[0]
        seen += labels.shape[0]
        batches += 1
        step += 1
    elapsed = time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "images": seen, "seconds": elapsed, "step": step}


def _restore(ckpt, device, optimizer_factory):
    """Model, optimiser and loop state from a reported checkpoint."""
    from drray.models.model import load_model

    with ckpt.as_directory() as d:
        d = Path(d)
        model = load_model(d, device=str(device))
        optimizer = optimizer_factory(model)
        state = json.loads((d / TRAIN_STATE_FILE).read_text())
        load_optimizer(optimizer, d / OPTIMIZER_FILE, device)
    return model, optimizer, state


def worker_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train `train_loop_per_worker`; `loop_config` is built by `drray.training.train.loop_config`."""
    import ray
    import ray.train
    import ray.train.torch
    import torch

    from drray.cam.target_layers import pin_target_layer
    from drray.models.model import create_model, save_model

    cfg = Config.from_dict(loop_config["config"])
    t, m = cfg.train, cfg.model
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    # Ray pins OMP threads to the whole-CPU count of the worker; use every core it was given.
    torch.set_num_threads(max(1, math.ceil(t.cpus_per_worker)))
    torch.manual_seed(t.seed + rank)
    generator = torch.Generator(device=device)  # augmentation; seeded each epoch (epoch_seed)

    def make_optimizer(model):
        from drray.training.optim import make_optimizer as optimizer_for

        return optimizer_for(_unwrap(model), t)

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        model, optimizer, state = _restore(ckpt, device, make_optimizer)
        log.info("rank %d: resuming after epoch %d from %s", rank, state["epoch"], ckpt.path)
    else:
        model = create_model(
            m.backbone, head=m.head, pretrained=m.pretrained, pretrained_path=m.pretrained_path,
            image_size=cfg.data.preprocess.image_size, preprocess=cfg.data.preprocess,
            drop_rate=m.drop_rate, cam_target_layer=m.cam_target_layer, allow_missing=m.allow_missing,
            global_pool=m.global_pool, mean=m.mean, std=m.std,
        ).to(device)
        # The model dir records the CAM layer it is explained at, so explain and serve use that one
        # even if drray's default stride changes later.
        model.card = pin_target_layer(model, name=m.cam_target_layer or cfg.cam.target_layer,
                                      stride=cfg.cam.target_stride)
        optimizer = make_optimizer(model)
        state = {"epoch": 0, "step": 0, "best_val_qwk": -math.inf, "best_epoch": 0, "stale": 0, "history": []}
    model = ray.train.torch.prepare_model(model)
    core = _unwrap(model)

    weights = loop_config.get("class_weights")
    class_weights = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    n_train = int(loop_config["n_train"])
    per_worker = n_train // world
    drop_last = per_worker >= t.batch_size
    steps_per_epoch = max(1, per_worker // t.batch_size if drop_last else 1)
    if t.limit_train_batches is not None:
        steps_per_epoch = min(steps_per_epoch, t.limit_train_batches)
    total_steps = steps_per_epoch * t.epochs
    warmup_steps = int(round(t.warmup_epochs * steps_per_epoch))
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    patience = t.early_stopping_patience
    pg = ray.util.get_current_placement_group()
    pg_hex = pg.id.hex() if pg is not None else ""

    for epoch in range(state["epoch"], t.epochs):
        seed = epoch_seed(t.seed, epoch, rank)
        generator.manual_seed(seed)
        tr = train_epoch(model, optimizer, train_shard, device, cfg=cfg, class_weights=class_weights,
                         step=state["step"], total_steps=total_steps, warmup_steps=warmup_steps,
                         drop_last=drop_last, generator=generator, shuffle_seed=seed)
        val = validate(model, val_shard, device, t.batch_size, core.card.head, seed=t.seed)
        qwk = val["metrics"]["val_qwk"]
        improved = qwk > state["best_val_qwk"]
        state.update(epoch=epoch + 1, step=tr["step"])
        if improved:
            state.update(best_val_qwk=qwk, best_epoch=epoch + 1, stale=0)
        else:
            state["stale"] += 1
        finished = epoch + 1 >= t.epochs or (patience > 0 and state["stale"] >= patience)
        images = tr["images"] * world
        metrics = {
            "epoch": epoch + 1,
            "val_qwk": qwk,
            **{k: v for k, v in val["metrics"].items() if k != "val_qwk"},
            "train_loss": tr["loss"],
            "train_images": images,
            "train_images_per_s": images / tr["seconds"] if tr["seconds"] > 0 else math.nan,
            "epoch_time_s": tr["seconds"],
            "lr": optimizer.param_groups[0]["lr"],
            "best_val_qwk": state["best_val_qwk"],
            "best_epoch": state["best_epoch"],
            "finished": finished,
            PLACEMENT_GROUP_METRIC: pg_hex,
        }
        state["history"].append(metrics)
        with tempfile.TemporaryDirectory(prefix="drray_ckpt_") as tmp:
            checkpoint = None
            if rank == 0:
                card_metrics = {**val["report"], "epoch": epoch + 1, "train_loss": tr["loss"]}
                save_model(core, tmp, metrics=card_metrics)
                save_optimizer(optimizer, Path(tmp) / OPTIMIZER_FILE)
                (Path(tmp) / TRAIN_STATE_FILE).write_text(json.dumps(state, indent=2))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)
        if finished:
            break
