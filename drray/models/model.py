"""Grading models: any timm backbone with a 5-grade head, and model dirs (weights.safetensors + model.json).

    model = create_model("resnet50", head="classification")     # or head="ordinal"
    probs = model.grade_probs(model(model.normalize(batch_uint8)))   # (B, 5), rows sum to 1
    save_model(model, "runs/demo/model", metrics={"val_qwk": 0.81})
    model = load_model("runs/demo/model")                       # never unpickles

Heads: `classification` is the timm model with 5 outputs (softmax over grades); `ordinal` has
one output, a score cut into grades by four thresholds fitted on validation (drray.models.ordinal
explains how its probabilities are derived). Preprocessing comes with the model: mean/std from
timm's pretrained config and the crop/normalise options from drray.config.PreprocessConfig are
stored in the card, so training, batch explanation and serving cannot drift apart.
Nothing here reaches a network unless `pretrained=True` is asked for.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from drray import storage
from drray.config import PreprocessConfig
from drray.models.card import (
    CARD_FILE,
    HEAD_OUTPUTS,
    WEIGHTS_FILE,
    ModelCard,
    drray_version,
    parse_card,
    write_card,
)
from drray.models.ordinal import (
    check_thresholds,
    fit_ordinal_temperature,
    fit_ordinal_thresholds,
    ordinal_predict,
    ordinal_probs,
)
from drray.models.weights import detached_state, weights_digest

log = logging.getLogger(__name__)

__all__ = [
    "DRModel", "ModelCard", "create_model", "save_model", "load_model", "list_backbones", "to_unit",
    "fit_ordinal_thresholds", "fit_ordinal_temperature",
]


class DRModel(nn.Module):
    """A timm backbone plus the card that says how to feed it and how to read its outputs."""

    def __init__(self, backbone: nn.Module, card: ModelCard):
        super().__init__()
        self.backbone = backbone
        """The timm model; CAM target layers are module names inside it."""
        self.card = card
        # Not persistent: mean/std live in the card, the state dict holds only the backbone's tensors.
        self.register_buffer("mean", torch.tensor(card.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(card.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def head(self) -> str:
        return self.card.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images -> (B, num_outputs) raw outputs (logits, or the ordinal score)."""
        return self.backbone(x)

    def _check_outputs(self, outputs: torch.Tensor) -> None:
        if outputs.dim() != 2 or outputs.shape[1] != self.card.num_outputs:
            raise ValueError(
                f"a {self.head} head gives (B, {self.card.num_outputs}) outputs, got shape {tuple(outputs.shape)}")

    def grade_probs(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, num_outputs) raw outputs -> (B, 5) grade probabilities, rows summing to 1; differentiable."""
        self._check_outputs(outputs)
        if self.head == "classification":
            return torch.softmax(outputs.float(), dim=1)
        return ordinal_probs(outputs.float(), self.card.thresholds, self.card.temperature)

    def predict(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, num_outputs) raw outputs -> (B,) long grades: argmax, or thresholds exceeded (ordinal)."""
        self._check_outputs(outputs)
        if self.head == "classification":
            return outputs.argmax(dim=1)
        return ordinal_predict(outputs.float(), self.card.thresholds)

    def set_ordinal_calibration(self, thresholds: Sequence[float], temperature: float | None = None) -> None:
        """Install thresholds (and optionally tau) fitted on validation, e.g. by `fit_ordinal_thresholds`."""
        if self.head != "ordinal":
            raise ValueError(f"thresholds belong to an ordinal head; this model's head is {self.head!r}")
        t = check_thresholds(thresholds)
        tau = self.card.temperature if temperature is None else float(temperature)
        self.card = dataclasses.replace(self.card, thresholds=t, temperature=tau)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB photograph -> (3, S, S) float32 network input on the CPU.

        The same `drray.data.preprocess.prepare` (crop, resize, Ben Graham) and mean/std as training.
        """
        from drray.data.preprocess import prepare

        prepared = prepare(image, self.card.preprocess_config())
        return self.normalize(torch.from_numpy(prepared.image).unsqueeze(0))[0]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float images in [0, 1] -> the network input: (x - mean) / std with the card's mean and std."""
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def normalize(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) or (B, 3, S, S) uint8 images, already prepared -> (B, 3, S, S) float32, on their device.

        `to_unit` then `standardize`: what every forward of drray feeds the network (training adds its
        augmentation between the two).
        """
        return self.standardize(to_unit(batch_uint8))


def to_unit(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) or (B, 3, S, S) uint8 pixels -> float32 (B, 3, S, S) in [0, 1], on their device.

    A channels-last batch (as Ray Data and the decode step hand them out) stays channels-last in
    memory: a permuted view, which CPU convolutions run fastest on.
    """
    x = batch_uint8
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        raise ValueError(
            f"normalize expects a uint8 tensor of 0-255 pixels, got {getattr(x, 'dtype', type(x).__name__)}; "
            "an already normalised float batch goes straight to the model")
    if x.dim() != 4:
        raise ValueError(f"normalize expects a batch (B, S, S, 3) or (B, 3, S, S), got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        if x.shape[-1] != 3:
            raise ValueError(f"normalize expects 3 RGB channels first or last, got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2)
    return x.float() / 255.0


# ----------------------------------------------------------------------------------- construction
def list_backbones(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """timm model names matching a wildcard pattern, e.g. list_backbones("convnext*")."""
    import timm

    return timm.list_models(pattern, pretrained=pretrained)


def check_backbone_name(name: str) -> None:
    """A ValueError (with close matches) unless `create_model` accepts `name`: a timm name, hf-hub:... or local-dir:...."""
    import timm

    if isinstance(name, str) and name.startswith(("hf-hub:", "local-dir:")):
        return  # resolved by timm from the Hugging Face hub or a local folder at creation
    if not isinstance(name, str) or not timm.is_model(name):
        close = difflib.get_close_matches(str(name), timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint}. List names with drray.models.model.list_backbones('pattern*')")


def _build_backbone(name: str, num_outputs: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_outputs, **kwargs)
    except TypeError as e:
        bad = [k for k in kwargs if k in str(e)]
        if not bad:
            raise
        hint = " (leave image_size unset to use its native input size)" if "img_size" in bad else ""
        raise ValueError(f"timm model {name!r} does not accept {', '.join(bad)}{hint}: {e}") from e


def classifier_names(backbone: nn.Module) -> tuple[str, ...]:
    """Module names of a timm backbone's classifier (its pretrained_cfg["classifier"])."""
    names = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _check_target_layer(backbone: nn.Module, names: str | None) -> None:
    from drray.cam.target_layers import FUSE_SEP

    for name in (names.split(FUSE_SEP) if names else []):  # "layer2+layer3": maps of both layers, fused
        _check_one_target_layer(backbone, name.strip())


def _check_one_target_layer(backbone: nn.Module, name: str) -> None:
    try:
        backbone.get_submodule(name)
    except AttributeError:
        modules = [n for n, _ in backbone.named_modules() if n]
        close = difflib.get_close_matches(name, modules, n=5, cutoff=0.5)
        raise ValueError(
            f"cam_target_layer {name!r} is not a module of {type(backbone).__name__}"
            + (f"; close matches: {', '.join(close)}" if close else "")
            + ". Leave it None to resolve the layer per family") from None


def load_pretrained(backbone: nn.Module, path: str | Path, allow_missing: bool = False) -> dict[str, Any]:
    """Load a local checkpoint into `backbone` (drray.models.checkpoints); returns the card's `pretrained` entry."""
    from drray.models.checkpoints import load_checkpoint

    return load_checkpoint(backbone, path, classifier=classifier_names(backbone), allow_missing=allow_missing).card()


def compute_model_id(model: DRModel) -> str:
    """`{timm_name}-{head}-{8 hex}`: a digest of the weights and, for ordinal heads, thresholds and tau."""
    extra = (model.card.thresholds, model.card.temperature) if model.head == "ordinal" else None
    digest = weights_digest(model.backbone.state_dict(), extra)
    return f"{model.card.timm_name}-{model.head}-{digest[:8]}"


def create_model(
    name: str,
    head: str = "classification",
    pretrained: bool = False,
    pretrained_path: str | Path | None = None,
    image_size: int | None = None,
    preprocess: PreprocessConfig | None = None,
    drop_rate: float = 0.0,
    cam_target_layer: str | None = None,
    allow_missing: bool = False,
    global_pool: str | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> DRModel:
    """A timm model `name` with a 5-grade `head`, randomly initialised unless weights are asked for.

    pretrained: timm's hub weights (needs internet). pretrained_path: a local checkpoint in any layout
    drray.models.checkpoints reads (RETFound, DINOv2, timm, DDP ...); the classifier is skipped, and
    any other backbone tensor it leaves fresh is an error unless `allow_missing`. The model card's
    `pretrained` records the file's sha256, its layout and what was loaded, resampled and dropped.
    global_pool: timm's pooling (`avg` with fc_norm for RETFound-style ViTs, `token`); None: the model's own.
    mean / std: the normalisation a foundation model was pretrained with, where it is not timm's for the name.
    image_size: network input side; default `preprocess.image_size` when preprocess is given,
    else the model's native size. Fixed-size models (ViT, Swin, MaxViT ...) are built for it.
    preprocess: crop/normalise options stored with the model; its image_size is replaced by the
    input size.
    """
    check_backbone_name(name)
    if head not in HEAD_OUTPUTS:
        raise ValueError(f"head must be one of {sorted(HEAD_OUTPUTS)}, got {head!r}")
    if pretrained and pretrained_path:
        raise ValueError("pass either pretrained=True (timm hub weights) or pretrained_path (a local file), not both")
    from timm.data import resolve_model_data_config
    from timm.models import get_pretrained_cfg

    size = image_size if image_size is not None else (preprocess.image_size if preprocess is not None else None)
    kwargs: dict[str, Any] = {}
    if drop_rate:
        kwargs["drop_rate"] = float(drop_rate)
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    native = get_pretrained_cfg(name)
    # Position embeddings and attention windows are sized at construction; convnets take any size.
    if size is not None and native is not None and native.fixed_input_size:
        kwargs["img_size"] = int(size)
    backbone = _build_backbone(name, HEAD_OUTPUTS[head], pretrained, kwargs)
    data_cfg = resolve_model_data_config(backbone)
    if size is None:
        _, h, w = data_cfg["input_size"]
        size = max(h, w)
        if h != w:
            log.info("%s: native input %dx%d is not square; using %d", name, h, w, size)
    provenance = load_pretrained(backbone, pretrained_path, allow_missing) if pretrained_path else None
    _check_target_layer(backbone, cam_target_layer)
    prep = dataclasses.replace(preprocess or PreprocessConfig(), image_size=int(size))
    card = ModelCard(
        timm_name=name,
        head=head,
        num_outputs=HEAD_OUTPUTS[head],
        input_size=int(size),
        mean=[float(x) for x in (mean if mean is not None else data_cfg["mean"])],
        std=[float(x) for x in (std if std is not None else data_cfg["std"])],
        preprocess=dataclasses.asdict(prep),
        cam_target_layer=cam_target_layer,
        drray_version=drray_version(),
        timm_kwargs=kwargs,
        pretrained=provenance,
    )
    model = DRModel(backbone, card)
    model.card.model_id = compute_model_id(model)
    return model


# -------------------------------------------------------------------------------------- model dirs
@dataclass(frozen=True)
class ModelFiles:
    """A model dir's two files as bytes: what travels through Ray's object store to actors on nodes
    that cannot see the driver's filesystem."""

    source: str
    """Where they were read from, for messages."""
    card: bytes
    weights: bytes

    def read_card(self) -> ModelCard:
        """The model card, without building the network."""
        return parse_card(self.card, storage.join(self.source, CARD_FILE))


def save_model(model: DRModel, out_dir: str | os.PathLike, metrics: dict | None = None) -> Path | str:
    """Write `out_dir/weights.safetensors` and `out_dir/model.json`; returns out_dir (a Path, or the URI as given).

    Refreshes the model's card (metrics, model_id, created, drray_version) to what was written.
    """
    from safetensors.torch import save

    model.card = dataclasses.replace(
        model.card,
        metrics=storage.json_ready(dict(metrics) if metrics is not None else model.card.metrics),
        model_id=compute_model_id(model),
        drray_version=drray_version(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    # Weights first: a reader that finds model.json finds the weights it describes.
    storage.write_bytes(storage.join(out_dir, WEIGHTS_FILE), save(detached_state(model.backbone), metadata={"format": "pt"}))
    write_card(out_dir, model.card)
    log.info("saved %s to %s", model.card.model_id, out_dir)
    return str(out_dir) if storage.is_uri(out_dir) else Path(out_dir)


def read_model_files(model_dir: str | os.PathLike) -> ModelFiles:
    """The bytes of a model dir (local path or URI), or an error saying what is missing."""
    d = str(model_dir)
    if not storage.exists(d):
        raise FileNotFoundError(
            f"model dir {d!r} does not exist; train one (`drray train` or `drray demo`) or write one "
            "with drray.save_model")
    if storage.is_file(d):
        raise NotADirectoryError(f"{d!r} is a file; pass the directory holding {CARD_FILE} and {WEIGHTS_FILE}")
    for name in (CARD_FILE, WEIGHTS_FILE):
        if not storage.is_file(storage.join(d, name)):
            raise FileNotFoundError(f"model dir {d!r} has no {name}; a model dir holds {CARD_FILE} and {WEIGHTS_FILE}")
    return ModelFiles(d, storage.read_bytes(storage.join(d, CARD_FILE)), storage.read_bytes(storage.join(d, WEIGHTS_FILE)))


def _read_weights(data: bytes, source: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except SafetensorError as e:
        # torch.save writes a zip (PK) or a raw pickle (0x80 protocol byte).
        kind = "a torch.save/pickle file" if data[:2] == b"PK" or data[:1] == b"\x80" else "not a safetensors file"
        raise ValueError(
            f"{source} is {kind} ({e}). drray never unpickles model dirs: import such weights with "
            "create_model(name, pretrained_path=FILE) and save_model") from e


def load_model(model_dir: str | os.PathLike | ModelFiles, device: str | torch.device = "cpu") -> DRModel:
    """Rebuild a model from a model dir written by `save_model` (local path, URI or `ModelFiles`), in eval mode."""
    files = model_dir if isinstance(model_dir, ModelFiles) else read_model_files(model_dir)
    card = parse_card(files.card, storage.join(files.source, CARD_FILE))
    check_backbone_name(card.timm_name)
    backbone = _build_backbone(card.timm_name, card.num_outputs, False, dict(card.timm_kwargs))
    weights_source = storage.join(files.source, WEIGHTS_FILE)
    state = _read_weights(files.weights, weights_source)
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{weights_source} does not fit {card.timm_name!r} with a {card.head} head: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}, "
            f"{len(wrong)} of another shape {wrong[:5]}. Was model.json edited or copied from another model?")
    backbone.load_state_dict(state, strict=True)
    model = DRModel(backbone, card)
    if card.model_id and compute_model_id(model) != card.model_id:
        log.warning("%s: weights do not match model_id %s in %s (changed after saving?)",
                    files.source, card.model_id, CARD_FILE)
    return model.eval().to(device)
