"""State dicts in and out of model dirs: local pretrained weights, safetensors I/O, weight digests.

Foreign checkpoints (`pretrained_path`) come from DDP (`module.`), Lightning (`model.`,
`state_dict` nesting), torch.compile (`_orig_mod.`) or timm itself; `match_state_dict` maps them
onto a backbone and skips what does not fit (typically the 1000-class ImageNet classifier).
`.pth` files are read with `torch.load(weights_only=True)`, which refuses arbitrary pickled code.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "model_ema")
"""Keys under which training frameworks nest the state dict in a checkpoint, in order of preference."""
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A flat {name: tensor} dict from a local .safetensors or .pth/.pt/.bin/.ckpt file (CPU tensors)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu")
    if suffix not in TORCH_SUFFIXES:
        raise ValueError(
            f"pretrained weights {str(p)!r}: unknown file type {suffix!r}; "
            f"use {', '.join(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)}")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises several types for disallowed or broken content
        raise ValueError(
            f"cannot read {str(p)!r} as plain tensors with torch.load(weights_only=True): {e}. "
            "Re-save it as a state dict, e.g. safetensors.torch.save_file(model.state_dict(), 'w.safetensors')"
        ) from e
    return _unwrap(obj, str(p))


def _unwrap(obj: Any, source: str) -> dict[str, Any]:
    import torch

    while isinstance(obj, dict):
        nested = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if nested is not None:
            obj = obj[nested]
            continue
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        break
    keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(
        f"{source} holds no state dict (got {keys}); expected {{name: tensor}}, possibly nested under one of "
        f"{', '.join(WRAPPER_KEYS)}")


def _matches(keys: Iterable[str], target: dict[str, Any]) -> int:
    return sum(1 for k in keys if k in target)


def strip_prefixes(state: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """Remove wrapper prefixes (`module.`, `model.` ...) wherever that makes more keys match `target`."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if not any(k.startswith(prefix) for k in state):
                continue
            stripped = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
            if _matches(stripped, target) > _matches(state, target):
                state, changed = stripped, True
    return state


def match_state_dict(
    state: dict[str, Any], target: dict[str, Any], classifier: Iterable[str] = (), source: str = "checkpoint"
) -> dict[str, Any]:
    """The entries of `state` that fit `target` by name and shape, logging every key left out.

    classifier: module names of the model's classifier (timm's pretrained_cfg["classifier"]);
    shape mismatches there are expected (1000 ImageNet classes vs 5 grades) and logged at INFO,
    anywhere else at WARNING. Raises ValueError when nothing fits.
    """
    state = strip_prefixes(state, target)
    heads = tuple(c + "." for c in classifier)
    fit, wrong_shape, unexpected = {}, [], []
    for k, v in state.items():
        if k not in target:
            unexpected.append(k)
        elif tuple(v.shape) != tuple(target[k].shape):
            wrong_shape.append(f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}")
        else:
            fit[k] = v
    if not fit:
        raise ValueError(
            f"no tensor of {source} matches the model ({len(state)} keys, e.g. {list(state)[:3]}; "
            f"the model expects e.g. {list(target)[:3]}). Is it a checkpoint of this architecture?")
    head_shape = [w for w in wrong_shape if w.startswith(heads)] if heads else []
    other_shape = [w for w in wrong_shape if w not in head_shape]
    missing = [k for k in target if k not in fit]
    if head_shape:
        log.info("%s: skipped classifier weights of another shape: %s", source, "; ".join(head_shape))
    if other_shape:
        log.warning("%s: skipped %d tensors of another shape: %s",
                    source, len(other_shape), "; ".join(other_shape[:10]))
    if unexpected:
        log.warning("%s: ignored %d keys the model does not have: %s",
                    source, len(unexpected), ", ".join(unexpected[:10]))
    if missing:
        log.info("%s: %d model tensors keep their fresh initialisation: %s",
                 source, len(missing), ", ".join(missing[:10]))
    log.info("%s: loaded %d of %d model tensors", source, len(fit), len(target))
    return fit


def detached_state(module) -> dict[str, Any]:
    """A CPU, contiguous copy-on-need of `module.state_dict()` that safetensors can write.

    safetensors refuses tensors sharing storage (tied weights); those are cloned.
    """
    seen: set[int] = set()
    out = {}
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel() > 0:
            t = t.clone()
        seen.add(ptr)
        out[k] = t
    return out


def weights_digest(state: dict[str, Any], extra: Any = None) -> str:
    """sha1 hex of names, dtypes, shapes and bytes of every tensor (sorted by name), plus repr(extra)."""
    import torch

    h = hashlib.sha1()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    if extra is not None:
        h.update(repr(extra).encode())
    return h.hexdigest()
