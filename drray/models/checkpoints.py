"""Foreign checkpoints onto a timm backbone: safe unpickling, the published layouts, resampling, and what was loaded.

    report = load_checkpoint(backbone, "RETFound_mae_natureCFP.pth", classifier=("head",))
    report.layout      # "mae" (RETFound MAE), "dinov2" (a DINOv2 teacher), "state_dict" ...
    report.loaded, report.resampled, report.dropped, report.fresh   # tensor names
    report.sha256      # of the file: which foundation model a result came from

Foundation models are published as pickled `.pth` files in their training code's layout:
- RETFound MAE: `{'model': encoder + MAE decoder, 'optimizer', 'epoch', 'scaler', 'args': argparse.Namespace}`;
- RETFound DINOv2 and DINOv2 itself: `{'teacher': {'backbone.<encoder>', 'dino_head.*', 'ibot_head.*'}}`, with
  `mlp.w12` / `mlp.w3` (SwiGLU) names, `register_tokens`, and blocks possibly chunked (`blocks.<chunk>.<i>.`);
- DDP, Lightning, torch.compile and timm's own files (`module.`, `model.`, `state_dict`, `_orig_mod.`).

Unpickling admits tensors, plain containers, numbers, strings and `argparse.Namespace` (training
arguments) only: `torch.load(weights_only=True)` with that one class allowed, so a hostile pickle
is refused before any of its code runs. Training state (optimizer, scaler, epoch, args) is read
past. What is not the backbone is dropped by rule and named: MAE decoders and mask tokens, DINO /
iBOT / projection heads, and the classifier, whose 1000 ImageNet classes are not 5 grades. A
position embedding on another grid is resampled (timm's `resample_abs_pos_embed`, prefix and
register tokens kept apart), and a patch embedding of another patch size too
(`resample_patch_embed`): never dropped. Any other backbone tensor left at its fresh
initialisation is an error unless allowed (`model.allow_missing`): a half-loaded foundation
model looks fine until its results do not.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

DROP_RULES: tuple[tuple[str, str], ...] = (
    (r"^(decoder|decoder_\w+)(\.|$)", "MAE decoder"),
    (r"^mask_token$", "MAE / iBOT mask token"),
    (r"^(dino_head|ibot_head|dino_loss|ibot_patch_loss)(\.|$)", "DINO / iBOT head"),
    (r"^(projector|projection_head|proj_head|text_\w+)(\.|$)", "projection head"),
)
"""Checkpoint keys that are not the backbone, each with why it is dropped."""
RENAMES: tuple[tuple[str, str], ...] = (
    (r"^blocks\.\d+\.(\d+)\.", r"blocks.\1."),  # DINOv2's chunked blocks: blocks.<chunk>.<i>. -> blocks.<i>.
    (r"\.mlp\.w12\.", ".mlp.fc1."),  # DINOv2 SwiGLU (packed) -> timm's SwiGLUPacked
    (r"\.mlp\.w3\.", ".mlp.fc2."),
    (r"^register_tokens$", "reg_token"),
)
PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "teacher.", "student.")
WRAPPERS = ("teacher", "model", "state_dict", "model_state_dict", "model_ema", "state_dict_ema", "student", "module")
"""Keys a checkpoint nests its weights under, in order of preference (a DINO teacher is the model to keep)."""


@dataclass
class LoadReport:
    """What a checkpoint gave the backbone (recorded in the model card as `pretrained`)."""

    path: str
    sha256: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    """Checkpoint key -> why it is not loaded (a rule above, the classifier, or not a tensor of this backbone)."""
    fresh: list[str] = field(default_factory=list)
    """Backbone tensors the checkpoint did not give (the classifier: by design)."""

    def card(self) -> dict[str, Any]:
        """The model card's `pretrained` entry: counts and names, dropped keys grouped by reason."""
        reasons: dict[str, list[str]] = {}
        for k, why in self.dropped.items():
            reasons.setdefault(why, []).append(k)
        return {"path": self.path, "sha256": self.sha256, "layout": self.layout, "loaded": len(self.loaded),
                "resampled": self.resampled, "dropped": reasons, "fresh": self.fresh}


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def safe_torch_load(path: str | Path) -> Any:
    """torch.load with weights_only=True, admitting argparse.Namespace too (training args); code never runs."""
    import argparse

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
    with torch.serialization.safe_globals([argparse.Namespace]):  # old (non-zip) files cannot be mmapped
        return torch.load(str(path), map_location="cpu", weights_only=True)


def unwrap(obj: Any, source: str) -> tuple[dict[str, Any], str]:
    """The {name: tensor} dict a checkpoint holds and the layout it was found in."""
    import torch

    path = []
    while isinstance(obj, dict):
        nested = next((k for k in WRAPPERS if isinstance(obj.get(k), dict) and obj[k]), None)
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and (nested is None or len(tensors) >= len(obj[nested])):
            return tensors, layout_of(path, tensors)
        if nested is None:
            break
        path.append(nested)
        obj = obj[nested]
    keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{source} holds no state dict (got {keys}); expected {{name: tensor}}, possibly nested under "
                     f"one of {', '.join(WRAPPERS)}")


def layout_of(path: list[str], state: dict[str, Any]) -> str:
    """A name for the layout found: what a reviewer reads in the model card."""
    keys = list(state)
    if path[:1] == ["teacher"] or any(k.startswith(("dino_head.", "ibot_head.")) for k in keys):
        return "dinov2 (teacher)" if path[:1] == ["teacher"] else "dinov2"
    if any(k.startswith("decoder") for k in keys):
        return "mae (encoder + decoder)"
    return "/".join(path) if path else "state_dict"


def normalise_keys(state: dict[str, Any], target: Iterable[str]) -> dict[str, Any]:
    """Strip wrapper prefixes where that makes more keys match, and apply RENAMES."""
    target = set(target)
    out = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if any(k.startswith(prefix) for k in out):
                stripped = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in out.items()}
                if sum(k in target for k in stripped) > sum(k in target for k in out):
                    out, changed = stripped, True
    renamed = {}
    for k, v in out.items():
        for pattern, repl in RENAMES:
            k = re.sub(pattern, repl, k)
        renamed[k] = v
    return renamed


def resample(name: str, value: Any, target: Any, backbone: Any) -> Any | None:
    """`value` made to fit `target`'s shape where it is a position or patch embedding; None where it cannot."""
    import torch
    from timm.layers import resample_abs_pos_embed, resample_patch_embed

    if name == "pos_embed" and value.ndim == 3 and target.ndim == 3 and value.shape[-1] == target.shape[-1]:
        grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
        if grid is None:
            return None
        keep = 0 if getattr(backbone, "no_embed_class", False) else int(getattr(backbone, "num_prefix_tokens", 1))
        n = value.shape[1]
        side = int(round((n - keep) ** 0.5))
        src_prefix = keep if side * side == n - keep else next(
            (p for p in range(0, 9) if int(round((n - p) ** 0.5)) ** 2 == n - p), None)
        if src_prefix is None:
            return None
        prefix, patches = value[:, :src_prefix], value[:, src_prefix:]
        patches = resample_abs_pos_embed(patches, new_size=list(grid), num_prefix_tokens=0)
        # A source with a class position the target keeps none for (DINOv2 with no_embed_class): drop it.
        prefix = prefix[:, :keep] if keep <= prefix.shape[1] else None
        if prefix is None:
            return None
        out = torch.cat([prefix, patches], dim=1)
        return out if tuple(out.shape) == tuple(target.shape) else None
    if name.endswith("patch_embed.proj.weight") and value.ndim == 4 and value.shape[:2] == target.shape[:2]:
        out = resample_patch_embed(value, new_size=list(target.shape[-2:]))
        return out if tuple(out.shape) == tuple(target.shape) else None
    return None


SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], str]:
    """(flat {name: tensor} on the CPU, layout) of a local .safetensors or .pth/.pt/.bin/.ckpt file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu"), "safetensors"
    if suffix not in TORCH_SUFFIXES:
        raise ValueError(f"pretrained weights {str(p)!r}: unknown file type {suffix!r}; "
                         f"use {', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}")
    try:
        obj = safe_torch_load(p)
    except Exception as e:  # the unpickler raises several types for disallowed or broken content
        raise ValueError(
            f"cannot read {str(p)!r} as tensors and training state with torch.load(weights_only=True): {e}. drray "
            "reads tensors, plain containers, numbers, strings and argparse.Namespace, never pickled code; re-save "
            "the weights, e.g. safetensors.torch.save_file(model.state_dict(), 'w.safetensors')") from e
    return unwrap(obj, str(p))


def load_checkpoint(backbone: Any, path: str | Path, *, classifier: Iterable[str] = (),
                    allow_missing: bool = False, state: dict[str, Any] | None = None,
                    layout: str | None = None) -> LoadReport:
    """Load a foreign checkpoint into `backbone` (see the module docstring); returns what it did.

    classifier: module names of the backbone's classifier (timm's pretrained_cfg["classifier"]): never loaded
    across shapes and allowed to stay fresh. state / layout: an already-read state dict (safetensors files).
    Raises ValueError when nothing fits, or when backbone tensors stay fresh and `allow_missing` is False.
    """
    source = str(path)
    if state is None:
        state, layout = read_checkpoint(path)
    report = LoadReport(source, sha256_of(path), layout or "state_dict")
    target = backbone.state_dict()
    heads = tuple(c + "." for c in classifier) + tuple(classifier)
    fit = {}
    for k, v in normalise_keys(state, target).items():
        why = next((reason for pattern, reason in DROP_RULES if re.search(pattern, k)), None)
        if why is None and k.startswith(heads) and k in target and tuple(v.shape) != tuple(target[k].shape):
            why = "classifier of another shape"
        if why is None and k not in target:
            why = "not a tensor of this backbone"
        if why is None and tuple(v.shape) != tuple(target[k].shape):
            fitted = resample(k, v, target[k], backbone)
            if fitted is None:
                why = f"shape {tuple(v.shape)}, the backbone's is {tuple(target[k].shape)}"
            else:
                report.resampled.append(f"{k} {tuple(v.shape)} -> {tuple(fitted.shape)}")
                v = fitted
        if why is not None:
            report.dropped[k] = why
            continue
        fit[k] = v
    if not fit:
        raise ValueError(f"no tensor of {source} matches the model ({len(state)} keys, e.g. {list(state)[:3]}; the "
                         f"model expects e.g. {list(target)[:3]}). Is it a checkpoint of this architecture?")
    report.loaded = sorted(fit)
    report.fresh = [k for k in target if k not in fit]
    missing = [k for k in report.fresh if not k.startswith(heads)]
    unknown = [k for k, why in report.dropped.items() if why == "not a tensor of this backbone"]
    if missing and not allow_missing:
        raise ValueError(
            f"{source} ({report.layout}) leaves {len(missing)} backbone tensors at their fresh initialisation: "
            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
            + (f"; it has {len(unknown)} keys this backbone lacks, e.g. {', '.join(unknown[:5])}" if unknown else "")
            + ". Is it this architecture? Set model.allow_missing=true to train from a partial start anyway")
    backbone.load_state_dict(fit, strict=False)
    for what, items in (("resampled", report.resampled), ("left fresh", missing)):
        if items:
            log.warning("%s: %s %d tensors: %s", source, what, len(items), "; ".join(items[:8]))
    log.info("%s (%s): loaded %d of %d backbone tensors, dropped %d keys", source, report.layout, len(fit),
             len(target), len(report.dropped))
    return report
