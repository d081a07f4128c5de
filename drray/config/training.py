"""Sections `model:`, `train:` and `tune:`: the backbone and head, one Ray Train job, the Ray Tune search."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from drray.config.checks import check
from drray.schema import HEADS


@dataclass
class ModelConfig:
    """Backbone and head."""

    backbone: str = "resnet18"
    """Any name timm.create_model accepts: `resnet50`, `hf-hub:timm/resnet18.a1_in1k`, `local-dir:/path`."""
    head: str = "classification"
    """`classification` (softmax over grades) or `ordinal` (one score, fitted thresholds)."""
    pretrained: bool = False
    """Use timm's hub weights (needs internet; off so nothing reaches a network)."""
    pretrained_path: str | None = None
    """A local checkpoint for the backbone: .safetensors, or a .pth in RETFound's, DINOv2's, timm's or a trainer's
    layout (drray.models.checkpoints)."""
    allow_missing: bool = False
    """Let backbone tensors the checkpoint does not give keep their fresh initialisation (else an error)."""
    global_pool: str | None = None
    """timm's pooling for the backbone: `avg` (with fc_norm: RETFound's fine-tuning), `token`; None: timm's default."""
    mean: list[float] | None = None
    std: list[float] | None = None
    """The normalisation the backbone was pretrained with, where it is not timm's for the name (RETFound-Green:
    0.5; FLAIR: 0 and 1, i.e. /255); None: timm's."""
    drop_rate: float = 0.0
    cam_target_layer: str | None = None
    """Module name of the CAM target layer; None resolves it per family."""

    def __post_init__(self) -> None:
        check(self.head in HEADS, f"model.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        check(0 <= self.drop_rate < 1, f"model.drop_rate must be in [0, 1), got {self.drop_rate}")
        check(not (self.pretrained and self.pretrained_path),
               "model.pretrained (timm hub weights) and model.pretrained_path (a local file) are both set; pick one")
        for name in ("mean", "std"):
            v = getattr(self, name)
            check(v is None or (isinstance(v, (list, tuple)) and len(v) == 3),
                  f"model.{name} must be three numbers (R, G, B) or null, got {v!r}")
        check(self.std is None or all(float(x) > 0 for x in self.std), f"model.std must be > 0, got {self.std}")


@dataclass
class TrainConfig:
    """One Ray Train job."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    num_workers: int = 1
    """Ray Train workers (DDP ranks)."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    early_stopping_patience: int = 5
    balance: str = "weighted_loss"
    """Class imbalance: `weighted_loss`, `none`."""
    augment: bool = True
    seed: int = 0
    storage_path: str | None = None
    """Where Ray Train / Tune keep runs and checkpoints: a local path, NFS mount or URI (s3://bucket/drray).
    None keeps them under the command's --out (OUT/ray_results). On a multi-node cluster every node must
    reach it."""
    limit_train_batches: int | None = None
    warmup_epochs: float = 1.0
    """Linear learning-rate warm-up before the cosine decay."""
    label_smoothing: float = 0.0
    """Classification head only."""
    materialize: bool = True
    """Decode + preprocess the splits once per run and keep them in the object store (small sets);
    false streams and decodes every epoch (sets larger than the object store)."""
    max_failures: int = 1
    """Ray Train FailureConfig: restarts of a run from its latest checkpoint after a worker failure."""
    layer_decay: float | None = None
    """Layer-wise learning-rate decay (0.65 as RETFound fine-tunes): each block learns at the rate of the one
    above times this (drray.training.optim); None: one rate for the whole model."""
    linear_probe: bool = False
    """Freeze the backbone and train only its classifier (how foundation models are compared)."""

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be a positive number, got {self.lr}")
        check(self.num_workers >= 1, f"train.num_workers must be >= 1, got {self.num_workers}")
        check(self.balance in ("weighted_loss", "none"),
               f"train.balance must be 'weighted_loss' or 'none', got {self.balance!r}")
        check(self.cpus_per_worker > 0, f"train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        check(not self.use_gpu or self.gpus_per_worker > 0,
               f"train.use_gpu is true but train.gpus_per_worker is {self.gpus_per_worker}; give each worker > 0 GPUs")
        check(self.max_failures >= -1,
               f"train.max_failures must be -1 (retry forever), 0 or more, got {self.max_failures}")
        check(self.limit_train_batches is None or self.limit_train_batches >= 1,
               f"train.limit_train_batches must be >= 1 or null, got {self.limit_train_batches}")
        check(self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        check(0 <= self.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        check(self.layer_decay is None or 0 < self.layer_decay <= 1,
              f"train.layer_decay must be in (0, 1] or null, got {self.layer_decay}")
        check(not (self.linear_probe and self.layer_decay is not None),
              "train.linear_probe trains the classifier alone; train.layer_decay has nothing to decay: set one")
        check(self.early_stopping_patience >= 0,
               f"train.early_stopping_patience must be >= 0 (0: off), got {self.early_stopping_patience}")


@dataclass
class TuneConfig:
    """Ray Tune search over backbones and hyper-parameters."""

    backbones: list[str] = field(default_factory=lambda: ["resnet18"])
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    image_sizes: list[int] = field(default_factory=lambda: [224])
    heads: list[str] = field(default_factory=lambda: ["classification"])
    num_samples: int = 1
    """Samples of the grid (each sample covers the whole grid)."""
    scheduler: str = "asha"
    """`asha` or `fifo`."""
    search_alg: str = "grid"
    """`grid` or `optuna` (needs the optuna extra)."""
    max_concurrent_trials: int | None = None
    cpus_per_trial_driver: float = 0.25
    max_failures: int = 1
    name: str = "drray_tune"
    resume: bool = False
    batch_sizes: list[int] = field(default_factory=list)
    """Batch sizes to search; empty uses train.batch_size."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it may be stopped."""
    reduction_factor: float = 2.0
    """ASHA: share of trials (1/reduction_factor) promoted at each rung."""
    verbose: int = 1
    """Tune's progress reporter: 0 silent, 1 status updates, 2 every result."""

    def __post_init__(self) -> None:
        for key in ("backbones", "lrs", "image_sizes", "heads", "batch_sizes"):
            values = getattr(self, key)
            if isinstance(values, (str, int, float)):
                values = [values]  # `tune.lrs=0.001` on the command line means a list of one
            setattr(self, key, list(values))
            check(len(set(map(str, getattr(self, key)))) == len(getattr(self, key)),
                   f"tune.{key} values repeat ({getattr(self, key)}); each grid point would run twice")
        for key in ("backbones", "lrs", "image_sizes", "heads"):
            check(len(getattr(self, key)) > 0, f"tune.{key} is empty; give at least one value")
        bad_heads = [h for h in self.heads if h not in HEADS]
        check(not bad_heads, f"tune.heads: {bad_heads} not among {', '.join(HEADS)}")
        check(all(isinstance(x, (int, float)) and x > 0 and math.isfinite(x) for x in self.lrs),
               f"tune.lrs must be positive numbers, got {self.lrs}")
        check(all(isinstance(x, int) and 16 <= x <= 2048 for x in self.image_sizes),
               f"tune.image_sizes must be whole pixels in 16..2048, got {self.image_sizes}")
        check(all(isinstance(x, int) and x >= 1 for x in self.batch_sizes),
               f"tune.batch_sizes must be integers >= 1, got {self.batch_sizes}")
        self.lrs = [float(x) for x in self.lrs]
        check(self.num_samples >= 1, f"tune.num_samples must be >= 1, got {self.num_samples}")
        check(self.scheduler in ("asha", "fifo"), f"tune.scheduler must be asha or fifo, got {self.scheduler!r}")
        check(self.search_alg in ("grid", "optuna"),
               f"tune.search_alg must be grid or optuna, got {self.search_alg!r}")
        check(self.cpus_per_trial_driver >= 0,
               f"tune.cpus_per_trial_driver must be >= 0, got {self.cpus_per_trial_driver}")
        check(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
               f"tune.max_concurrent_trials must be >= 1 or null, got {self.max_concurrent_trials}")
        check(self.max_failures >= -1,
               f"tune.max_failures must be -1 (retry forever), 0 or more, got {self.max_failures}")
        check(self.grace_period >= 1, f"tune.grace_period must be >= 1, got {self.grace_period}")
        check(self.reduction_factor > 1, f"tune.reduction_factor must be > 1, got {self.reduction_factor}")
        check(self.verbose in (0, 1, 2), f"tune.verbose must be 0, 1 or 2, got {self.verbose}")
