"""Typed configuration: one dataclass per stage, filled from YAML recipes and `key=value` overrides.

A recipe (configs/*.yaml) has one mapping per section (`data:`, `model:`, `train:` ...); an
override names a section and a field, `train.epochs=3`, and its value is parsed as YAML, so
`tune.backbones=[resnet18,resnet50]` is a list. Unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from drray.schema import NUM_GRADES


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass
class SynthConfig:
    """Procedural fundus set."""

    n: int = 200
    """Number of images."""
    size: int = 512
    """Side of the square photograph, in pixels."""
    seed: int = 0
    """Same seed, same bytes."""
    class_balance: tuple[float, ...] = (0.49, 0.10, 0.27, 0.05, 0.08)
    """Share of grades 0-4 (default near APTOS 2019)."""
    patients_share_eyes: bool = True
    """Pair consecutive images as the left and right eye of one patient."""

    def __post_init__(self) -> None:
        self.class_balance = tuple(float(x) for x in self.class_balance)
        _check(self.n >= 1, f"synth.n must be >= 1, got {self.n}")
        _check(self.size >= 32, f"synth.size must be >= 32 pixels, got {self.size}")
        _check(len(self.class_balance) == NUM_GRADES,
               f"synth.class_balance needs {NUM_GRADES} shares (grades 0-4), got {len(self.class_balance)}")
        _check(all(x >= 0 for x in self.class_balance) and sum(self.class_balance) > 0,
               f"synth.class_balance must be non-negative with a positive sum, got {self.class_balance}")


@dataclass
class PreprocessConfig:
    """Fundus crop, optional Ben Graham normalisation, resize. Stored in every model dir."""

    image_size: int = 224
    """Side of the square network input."""
    crop: bool = True
    """Crop to the fundus circle (pad to a square) before resizing."""
    ben_graham: bool = False
    """Subtract the local average colour (Ben Graham, Kaggle DR 2015) and blank the rim."""
    ben_graham_sigma_frac: float = 1.0 / 60.0
    """Gaussian sigma as a share of the image side (Ben Graham's radius/30 on a crop to the circle)."""

    def __post_init__(self) -> None:
        _check(16 <= self.image_size <= 2048, f"image_size must be in 16..2048, got {self.image_size}")
        _check(self.ben_graham_sigma_frac > 0, "ben_graham_sigma_frac must be > 0")


@dataclass
class DataConfig:
    """Where the images are and how they are read."""

    manifest: str = "runs/demo/manifest.parquet"
    """Manifest written by `drray ingest`."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    seed: int = 0
    """Seed of the patient-level split."""
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """train/val/test shares for sources without an official split."""
    max_image_pixels: int = 64_000_000
    """Images larger than this are refused (decompression-bomb guard)."""
    num_cpus_per_decode_task: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig(**self.preprocess)
        self.split_fractions = tuple(float(x) for x in self.split_fractions)
        _check(len(self.split_fractions) == 3 and abs(sum(self.split_fractions) - 1) < 1e-6,
               f"data.split_fractions must be three shares summing to 1, got {self.split_fractions}")
        _check(self.max_image_pixels > 0, "data.max_image_pixels must be > 0")


@dataclass
class ModelConfig:
    """Backbone and head."""

    backbone: str = "resnet18"
    """Any timm model name."""
    head: str = "classification"
    """`classification` (softmax over grades) or `ordinal` (one score, fitted thresholds)."""
    pretrained: bool = False
    """Use timm's hub weights (needs internet; off so nothing reaches a network)."""
    pretrained_path: str | None = None
    """Local .safetensors or .pth weights for the backbone."""
    drop_rate: float = 0.0
    cam_target_layer: str | None = None
    """Module name of the CAM target layer; None resolves it per family."""

    def __post_init__(self) -> None:
        _check(self.head in ("classification", "ordinal"),
               f"model.head must be 'classification' or 'ordinal', got {self.head!r}")


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
    storage_path: str = "runs/ray_results"
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

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(self.num_workers >= 1, f"train.num_workers must be >= 1, got {self.num_workers}")
        _check(self.balance in ("weighted_loss", "none"),
               f"train.balance must be 'weighted_loss' or 'none', got {self.balance!r}")


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
    metric: str = "val_qwk"
    mode: str = "max"
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
        _check(len(self.backbones) > 0, "tune.backbones is empty")
        _check(self.scheduler in ("asha", "fifo"), f"tune.scheduler must be asha or fifo, got {self.scheduler!r}")
        _check(self.search_alg in ("grid", "optuna"),
               f"tune.search_alg must be grid or optuna, got {self.search_alg!r}")


@dataclass
class CamConfig:
    """Explanation maps."""

    methods: list[str] = field(default_factory=lambda: ["gradcam"])
    target: str = "pred"
    """`pred` (predicted grade), `referable`, `score` (ordinal), or a grade 0-4."""
    cam_size: int = 32
    """Side of the low-resolution map stored per row."""
    batch_size: int = 16
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    overlay_size: int = 128
    faithfulness: bool = False
    pointing_tolerance: float = 0.02
    """Pointing-game tolerance as a share of the image side."""
    decode_cpus: float = 0.5
    """CPUs per decode task of `drray explain`: below 1 so decode tasks fit beside the actors on small machines."""
    torch_threads: int | None = None
    """Torch intra-op threads per explain actor; None keeps Ray's setting (the actor's whole CPUs). More
    threads than CPUs lets the model use cores that decode tasks leave idle."""
    actor_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each explain actor needs, e.g. {"explainer": 1} to run them on nodes started
    with `ray start --resources='{"explainer": 1}'` only."""

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        self.methods = list(self.methods)
        _check(self.cam_size >= 1, f"cam.cam_size must be >= 1, got {self.cam_size}")
        _check(self.batch_size >= 1, f"cam.batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_actors >= 1, f"cam.num_actors must be >= 1, got {self.num_actors}")
        _check(self.cpus_per_actor >= 0 and self.gpus_per_actor >= 0,
               "cam.cpus_per_actor and cam.gpus_per_actor must be >= 0")
        _check(self.decode_cpus > 0, f"cam.decode_cpus must be > 0, got {self.decode_cpus}")
        _check(self.torch_threads is None or self.torch_threads >= 1,
               f"cam.torch_threads must be >= 1 or null, got {self.torch_threads}")
        _check(self.overlay_size >= 8, f"cam.overlay_size must be >= 8 pixels, got {self.overlay_size}")
        _check(0 <= self.pointing_tolerance < 1,
               f"cam.pointing_tolerance is a share of the image side in [0, 1), got {self.pointing_tolerance}")


@dataclass
class ServeConfig:
    model_dir: str = "runs/demo/model"
    num_replicas: int = 1
    num_gpus: float = 0.0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05


@dataclass
class Config:
    """A whole recipe: every section, as in configs/*.yaml."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        return build(cls, raw, "")

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: Iterable[str] = ()) -> "Config":
        raw: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"config file {str(p)!r} does not exist")
            raw = yaml.safe_load(p.read_text()) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"config file {str(p)!r} must hold a mapping of sections, got {type(raw).__name__}")
        for item in overrides:
            apply_override(raw, item)
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `section.field[.sub]=value` in a raw config mapping; the value is parsed as YAML."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form section.field=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"override {item!r}: key must name a section and a field, e.g. train.epochs=3")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {p!r} is not a section")
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


def build(cls: type, raw: dict[str, Any] | None, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, recursing into nested dataclasses."""
    raw = dict(raw or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in raw.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = build(type(default), value, f"{where}.{name}" if where else name)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad config for {where or cls.__name__}: {e}") from e
