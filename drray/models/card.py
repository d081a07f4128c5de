"""`model.json`: everything needed to rebuild a model and its preprocessing, as plain JSON.

A model dir is `weights.safetensors` (the timm backbone's state dict) plus this card: the timm
name and the keyword arguments it was built with, the head, the input size, mean/std, the
crop/normalise options and, for an ordinal head, its thresholds and temperature. Nothing is
pickled, so a model dir from anyone can be opened safely.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drray.config import PreprocessConfig
from drray.models.ordinal import DEFAULT_TEMPERATURE, DEFAULT_THRESHOLDS, check_thresholds
from drray.schema import NUM_GRADES

log = logging.getLogger(__name__)

CARD_FILE = "model.json"
WEIGHTS_FILE = "weights.safetensors"
FORMAT_VERSION = 1
HEAD_OUTPUTS = {"classification": NUM_GRADES, "ordinal": 1}
"""Raw outputs per head: 5 logits, or one ordinal score."""


def drray_version() -> str:
    """Installed drray version, "0+unknown" when running from a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("drray")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class ModelCard:
    """What model.json holds (see the module docstring)."""

    timm_name: str
    head: str
    """`classification` (softmax over 5 logits) or `ordinal` (one score, thresholds)."""
    num_outputs: int
    input_size: int
    """Side of the square network input, in pixels."""
    mean: list[float]
    std: list[float]
    """Per-channel normalisation of [0, 1] RGB, from timm's pretrained config of the backbone."""
    preprocess: dict[str, Any]
    """`PreprocessConfig` as a dict; its image_size equals input_size."""
    thresholds: list[float] | None = None
    """Ordinal head: the four score cut points between grades 0-4."""
    temperature: float | None = None
    """Ordinal head: tau of the cumulative logistic grade probabilities (see drray.models.ordinal)."""
    cam_target_layer: str | None = None
    """Module name (inside the backbone) of the CAM target layer; None resolves it by stride."""
    cam_target_stride: int | None = None
    """Output stride (8, 16, 32) of the CAM target layer: the layer's when both are set (what it was
    resolved from), the one to resolve when cam_target_layer is None; None: drray's default stride."""
    cam_method: str | None = None
    """The CAM method chosen for this model by measured localisation (drray.explain.select_layer); None:
    the caller's default (gradcam)."""
    cam_selection: dict[str, Any] | None = None
    """How the layer and method were chosen: the split, its lesion images and every candidate's scores."""
    metrics: dict[str, Any] = field(default_factory=dict)
    drray_version: str = ""
    model_id: str = ""
    """`{timm_name}-{head}-{8 hex of the sha1 of weights and thresholds}`."""
    created: str = ""
    """ISO 8601 UTC time the model dir was written."""
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of timm.create_model (img_size, drop_rate) to rebuild the same network."""
    pretrained: dict[str, Any] | None = None
    """Where the backbone's starting weights came from (`model.pretrained_path`): the file, its sha256, the
    layout recognised, tensors loaded (count), resampled and dropped (names, by reason) and left fresh."""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.head not in HEAD_OUTPUTS:
            raise ValueError(f"head must be one of {sorted(HEAD_OUTPUTS)}, got {self.head!r}")
        if int(self.num_outputs) != HEAD_OUTPUTS[self.head]:
            raise ValueError(
                f"a {self.head} head has {HEAD_OUTPUTS[self.head]} outputs, card says {self.num_outputs}")
        self.num_outputs = int(self.num_outputs)
        self.input_size = int(self.input_size)
        self.mean = [float(x) for x in self.mean]
        self.std = [float(x) for x in self.std]
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need 3 channels with std > 0, got mean={self.mean} std={self.std}")
        prep = self.preprocess_config()  # validates the dict
        if prep.image_size != self.input_size:
            raise ValueError(f"preprocess.image_size {prep.image_size} differs from input_size {self.input_size}")
        self.preprocess = dataclasses.asdict(prep)
        if self.head == "ordinal":
            self.thresholds = check_thresholds(DEFAULT_THRESHOLDS if self.thresholds is None else self.thresholds)
            self.temperature = float(DEFAULT_TEMPERATURE if self.temperature is None else self.temperature)
            if not (math.isfinite(self.temperature) and self.temperature > 0):
                raise ValueError(f"ordinal temperature must be a positive number, got {self.temperature}")
        elif self.thresholds is not None or self.temperature is not None:
            raise ValueError("thresholds and temperature belong to an ordinal head; a classification card has none")

    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing this model was trained with."""
        try:
            return PreprocessConfig(**self.preprocess)
        except TypeError as e:
            raise ValueError(f"model card preprocess {self.preprocess} does not fit PreprocessConfig: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # allow_nan=False: model.json must stay strict JSON for non-Python readers.
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "model card") -> "ModelCard":
        """Validate and build; unknown keys (from a newer drray) are logged and ignored."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source} must be a JSON object, got {type(raw).__name__}")
        version = raw.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"{source} has format_version {version!r}, this drray ({drray_version()}) reads up to "
                f"{FORMAT_VERSION}; upgrade drray to open it")
        names = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in names.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in raw]
        if missing:
            raise ValueError(f"{source} lacks required key(s) {', '.join(missing)}")
        unknown = sorted(set(raw) - set(names))
        if unknown:
            log.warning("%s: ignoring unknown key(s) %s (written by drray %s)",
                        source, ", ".join(unknown), raw.get("drray_version", "?"))
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source} is invalid: {e}") from e

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        p = Path(path)
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{p} is not valid JSON ({e}); a model dir's model.json is written by drray.save_model") from e
        return cls.from_dict(raw, source=str(p))


def read_card(model_dir: str | Path) -> ModelCard:
    """The model card of a model dir (local path or URI), without loading weights or torch."""
    from drray import storage

    path = storage.join(model_dir, CARD_FILE)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{str(model_dir)!r} is not a model dir (no {CARD_FILE}); train one with `drray tune`")
    return parse_card(storage.read_bytes(path), path)


def write_card(model_dir: str | Path, card: ModelCard) -> str:
    """Write `card` as MODEL_DIR/model.json (local path or URI; strict JSON, replaced atomically); returns its path."""
    from drray import storage

    path = storage.join(model_dir, CARD_FILE)
    storage.write_text(path, card.to_json() + "\n")
    return path


def parse_card(data: bytes, source: str) -> ModelCard:
    """A model card from model.json's bytes; `source` names where they came from in errors."""
    try:
        raw = json.loads(data)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not valid JSON ({e}); a model dir's model.json is written by drray.save_model") from e
    return ModelCard.from_dict(raw, source=source)
