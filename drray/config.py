"""Typed configuration: one dataclass per stage, filled from YAML recipes and `key=value` overrides.

A recipe (configs/*.yaml) has one mapping per section (`data:`, `model:`, `train:` ...); an
override names a section and a field, `train.epochs=3`, and its value is parsed as YAML, so
`tune.backbones=[resnet18,resnet50]` is a list. Unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from drray.schema import HEADS, NUM_GRADES


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
    """Images larger than this are refused (decompression-bomb guard), in every stage alike."""
    decode_cpus: float = 0.5
    """CPUs per Ray Data decode task (training, explanation, evaluation): below 1 so decode tasks fit
    beside the model's actors and workers on small machines."""

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig(**self.preprocess)
        self.split_fractions = tuple(float(x) for x in self.split_fractions)
        _check(len(self.split_fractions) == 3 and abs(sum(self.split_fractions) - 1) < 1e-6,
               f"data.split_fractions must be three shares summing to 1, got {self.split_fractions}")
        _check(self.max_image_pixels > 0, "data.max_image_pixels must be > 0")
        _check(self.decode_cpus > 0, f"data.decode_cpus must be > 0, got {self.decode_cpus}")


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
    """Local .safetensors or .pth weights for the backbone."""
    drop_rate: float = 0.0
    cam_target_layer: str | None = None
    """Module name of the CAM target layer; None resolves it per family."""

    def __post_init__(self) -> None:
        _check(self.head in HEADS, f"model.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        _check(0 <= self.drop_rate < 1, f"model.drop_rate must be in [0, 1), got {self.drop_rate}")
        _check(not (self.pretrained and self.pretrained_path),
               "model.pretrained (timm hub weights) and model.pretrained_path (a local file) are both set; pick one")


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

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"train.epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be a positive number, got {self.lr}")
        _check(self.num_workers >= 1, f"train.num_workers must be >= 1, got {self.num_workers}")
        _check(self.balance in ("weighted_loss", "none"),
               f"train.balance must be 'weighted_loss' or 'none', got {self.balance!r}")
        _check(self.cpus_per_worker > 0, f"train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        _check(not self.use_gpu or self.gpus_per_worker > 0,
               f"train.use_gpu is true but train.gpus_per_worker is {self.gpus_per_worker}; give each worker > 0 GPUs")
        _check(self.max_failures >= -1,
               f"train.max_failures must be -1 (retry forever), 0 or more, got {self.max_failures}")
        _check(self.limit_train_batches is None or self.limit_train_batches >= 1,
               f"train.limit_train_batches must be >= 1 or null, got {self.limit_train_batches}")
        _check(self.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(0 <= self.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(self.early_stopping_patience >= 0,
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
            _check(len(set(map(str, getattr(self, key)))) == len(getattr(self, key)),
                   f"tune.{key} values repeat ({getattr(self, key)}); each grid point would run twice")
        for key in ("backbones", "lrs", "image_sizes", "heads"):
            _check(len(getattr(self, key)) > 0, f"tune.{key} is empty; give at least one value")
        bad_heads = [h for h in self.heads if h not in HEADS]
        _check(not bad_heads, f"tune.heads: {bad_heads} not among {', '.join(HEADS)}")
        _check(all(isinstance(x, (int, float)) and x > 0 and math.isfinite(x) for x in self.lrs),
               f"tune.lrs must be positive numbers, got {self.lrs}")
        _check(all(isinstance(x, int) and 16 <= x <= 2048 for x in self.image_sizes),
               f"tune.image_sizes must be whole pixels in 16..2048, got {self.image_sizes}")
        _check(all(isinstance(x, int) and x >= 1 for x in self.batch_sizes),
               f"tune.batch_sizes must be integers >= 1, got {self.batch_sizes}")
        self.lrs = [float(x) for x in self.lrs]
        _check(self.num_samples >= 1, f"tune.num_samples must be >= 1, got {self.num_samples}")
        _check(self.scheduler in ("asha", "fifo"), f"tune.scheduler must be asha or fifo, got {self.scheduler!r}")
        _check(self.search_alg in ("grid", "optuna"),
               f"tune.search_alg must be grid or optuna, got {self.search_alg!r}")
        _check(self.cpus_per_trial_driver >= 0,
               f"tune.cpus_per_trial_driver must be >= 0, got {self.cpus_per_trial_driver}")
        _check(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
               f"tune.max_concurrent_trials must be >= 1 or null, got {self.max_concurrent_trials}")
        _check(self.max_failures >= -1,
               f"tune.max_failures must be -1 (retry forever), 0 or more, got {self.max_failures}")
        _check(self.grace_period >= 1, f"tune.grace_period must be >= 1, got {self.grace_period}")
        _check(self.reduction_factor > 1, f"tune.reduction_factor must be > 1, got {self.reduction_factor}")
        _check(self.verbose in (0, 1, 2), f"tune.verbose must be 0, 1 or 2, got {self.verbose}")


@dataclass
class CamConfig:
    """Explanation maps."""

    methods: list[str] | None = None
    """CAM methods per image; None: the one chosen for the model (its card's `cam_method`, written by
    layer selection), else gradcam; an empty list predicts only."""
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
    torch_threads: int | None = None
    """Torch intra-op threads per explain actor; None keeps Ray's setting (the actor's whole CPUs). More
    threads than CPUs lets the model use cores that decode tasks leave idle."""
    actor_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each explain actor needs, e.g. {"explainer": 1} to run them on nodes started
    with `ray start --resources='{"explainer": 1}'` only."""
    sanity_images: int = 64
    """Images of the model-randomisation check `drray explain` runs after the maps (Adebayo et al. 2018:
    the same images explained with the top blocks re-initialised, into randomisation.parquet); 0 turns it off."""
    select_layer: bool = True
    """`drray tune` (and `drray explain --select-layer`) choose the target layer and method by the pointing
    game on `select_split`, where it has lesion masks, and write them into the model card
    (drray.explain.select_layer); without masks the card keeps the default stride."""
    select_split: str = "val"
    select_fused: bool = True
    """Layer selection also tries each pair of neighbouring strides fused (`layer2+layer3`: maps multiplied)."""
    select_methods: list[str] = field(default_factory=lambda: ["gradcam", "xgradcam", "gradcam++", "hirescam",
                                                               "layercam"])
    """Fast methods layer selection compares."""
    sanity_draws: int = 5
    """Random re-initialisations per step of the randomisation check, averaged: a single random network's
    pointing score swings with its seed (0.00-0.14 on the demo model against a chance of 0.11), so 5
    draws put the mean within about 0.025 (one standard error) for a second or two of CPU each."""
    target_layer: str | None = None
    """Dotted module name of the CAM target layer (e.g. `backbone.layer2`), or several joined by `+` for a fused
    map (`layer2+layer3`: the layers' maps multiplied); None: by stride or the model card."""
    target_stride: int | None = None
    """Output stride of the CAM target layer: 8, 16 or 32 (finer maps land on smaller lesions); None: the model
    card's layer, else drray's default: strides 8 and 16 fused (drray.cam.target_layers.DEFAULT_FUSED_STRIDES)."""

    def __post_init__(self) -> None:
        _check(self.target_stride is None or (not isinstance(self.target_stride, bool)
                                              and self.target_stride in (8, 16, 32)),
               f"cam.target_stride must be 8, 16, 32 or null, got {self.target_stride!r}")
        _check(self.target_layer is None or self.target_stride is None,
               f"cam.target_layer ({self.target_layer!r}) and cam.target_stride ({self.target_stride}) are both set; "
               "set one: a layer name, or a stride to pick the layer by")
        if isinstance(self.select_methods, str):
            self.select_methods = [m.strip() for m in self.select_methods.split(",") if m.strip()]
        _check(len(self.select_methods) > 0, "cam.select_methods is empty; name at least one fast CAM method")
        _check(self.sanity_draws >= 1, f"cam.sanity_draws must be >= 1, got {self.sanity_draws}")
        _check(self.sanity_images >= 0, f"cam.sanity_images must be >= 0 (0: no randomisation check), got {self.sanity_images}")
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if self.methods is not None:
            self.methods = list(self.methods)
        _check(self.cam_size >= 1, f"cam.cam_size must be >= 1, got {self.cam_size}")
        _check(self.batch_size >= 1, f"cam.batch_size must be >= 1, got {self.batch_size}")
        _check(self.num_actors >= 1, f"cam.num_actors must be >= 1, got {self.num_actors}")
        _check(self.cpus_per_actor >= 0 and self.gpus_per_actor >= 0,
               "cam.cpus_per_actor and cam.gpus_per_actor must be >= 0")
        _check(self.torch_threads is None or self.torch_threads >= 1,
               f"cam.torch_threads must be >= 1 or null, got {self.torch_threads}")
        _check(self.overlay_size >= 8, f"cam.overlay_size must be >= 8 pixels, got {self.overlay_size}")
        _check(0 <= self.pointing_tolerance < 1,
               f"cam.pointing_tolerance is a share of the image side in [0, 1), got {self.pointing_tolerance}")


@dataclass
class ServeConfig:
    """Live explanations (`drray serve`, serve_config.yaml): limits and batching of the Explainer deployment."""

    model_dir: str = "runs/demo/model"
    """Model dir served (local path or URI)."""
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds; 127.0.0.1 keeps the API off the network until you choose otherwise."""
    port: int = 8000
    num_replicas: int = 1
    num_cpus: float = 1.0
    """CPUs per Explainer replica."""
    num_gpus: float = 0.0
    """GPUs per Explainer replica (0: CPU)."""
    max_batch_size: int = 1
    """Requests `@serve.batch` groups into one forward pass; 1 turns batching off (on 2 CPU cores batches
    did not pay: see benchmarks/README.md, serve_latency.py)."""
    batch_wait_timeout_s: float = 0.01
    """How long a batch waits to fill before it runs."""
    max_ongoing_requests: int = 16
    """Per replica; requests beyond this queue in the proxy."""
    max_body_mb: float = 20.0
    """Uploads above this size get HTTP 413 before they are read whole."""
    max_image_pixels: int = 64_000_000
    """Decoded images above this many pixels are refused (decompression bombs)."""
    methods: list[str] = field(default_factory=lambda: ["gradcam", "gradcam++"])
    """CAM methods a request may ask for; the first is the default."""
    torch_threads: int | None = None
    """Torch intra-op threads per Explainer replica; None keeps Ray's setting (the replica's whole CPUs, at least 1)."""
    autoscaling_config: dict[str, Any] | None = None
    """Ray Serve autoscaling of the Explainer (min_replicas, max_replicas, target_ongoing_requests, ...);
    when set it replaces num_replicas."""

    def __post_init__(self) -> None:
        self.methods = [self.methods] if isinstance(self.methods, str) else list(self.methods)
        _check(self.torch_threads is None or (isinstance(self.torch_threads, int) and self.torch_threads >= 1),
               f"serve.torch_threads must be >= 1 or null, got {self.torch_threads!r}")
        _check(self.autoscaling_config is None or isinstance(self.autoscaling_config, dict),
               f"serve.autoscaling_config must be a mapping (min_replicas: 1, max_replicas: 4, ...) or null, "
               f"got {self.autoscaling_config!r}")
        _check(bool(self.model_dir), "serve.model_dir is empty; name a model dir (runs/demo/model)")
        _check(isinstance(self.port, int) and 0 <= self.port <= 65535, f"serve.port must be 0-65535, got {self.port}")
        _check(self.num_replicas >= 1, f"serve.num_replicas must be >= 1, got {self.num_replicas}")
        _check(self.num_cpus >= 0 and self.num_gpus >= 0, "serve.num_cpus and serve.num_gpus must be >= 0")
        _check(self.max_batch_size >= 1, f"serve.max_batch_size must be >= 1, got {self.max_batch_size}")
        _check(self.batch_wait_timeout_s >= 0, f"serve.batch_wait_timeout_s must be >= 0, got {self.batch_wait_timeout_s}")
        _check(self.max_ongoing_requests >= 1, f"serve.max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        _check(self.max_batch_size <= self.max_ongoing_requests,
               f"serve.max_batch_size ({self.max_batch_size}) is above serve.max_ongoing_requests "
               f"({self.max_ongoing_requests}): a replica could never fill a batch; raise max_ongoing_requests")
        _check(self.max_body_mb > 0, f"serve.max_body_mb must be > 0, got {self.max_body_mb}")
        _check(self.max_image_pixels > 0, f"serve.max_image_pixels must be > 0, got {self.max_image_pixels}")
        _check(len(self.methods) > 0, "serve.methods is empty; name at least one CAM method")


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
