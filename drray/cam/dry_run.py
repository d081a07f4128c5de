"""One batch-1 forward with a hook on every module: the feature maps a model computes, for models timm
says nothing about (no `feature_info`, no per-family rule). Pure inspection: the model is left as it was."""

from __future__ import annotations

import torch
from torch import nn


def dry_input_size(model: nn.Module, input_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """Input side(s) for the dry forward: given, else the model's fixed image size, else its default config."""
    size = input_size
    for owner in (model, getattr(model, "patch_embed", None)):
        if size is None and owner is not None and getattr(owner, "img_size", None) is not None:
            size = owner.img_size
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def dry_run(model: nn.Module, input_size) -> tuple[list[tuple[str, tuple[int, ...]]], tuple[int, int]]:
    """(module name, output shape) of every non-identity module, in execution order, for one batch-1 forward."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if not name or isinstance(module, nn.Identity):
            continue
        handles.append(module.register_forward_hook(
            lambda _m, _i, out, name=name: seen.append((name, tuple(out.shape)))
            if isinstance(out, torch.Tensor) else None))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    height, width = dry_input_size(model, input_size)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width, device=device))
    except Exception as e:
        raise ValueError(
            f"the dry forward of {type(model).__name__} at {height}x{width} px, used to find its CAM target "
            f"layer, failed ({e}); pass input_size= or the target layer's name") from e
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return seen, (height, width)


def spatial_maps(model: nn.Module, seen) -> list[tuple[str, str, int, bool]]:
    """(name, layout, map height, has the pooled channel count) of every 4-D map with h, w > 1."""
    num_features = getattr(model, "num_features", None)
    maps = []
    for name, shape in seen:
        if len(shape) != 4:
            continue
        nhwc = num_features is not None and shape[-1] == num_features and shape[1] != num_features
        h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
        if h > 1 and w > 1:
            maps.append((name, "nhwc" if nhwc else "nchw", h, num_features in (shape[1], shape[-1])))
    return maps
