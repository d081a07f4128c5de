"""Reshape transforms: a CAM target layer's output as a (B, C, h, w) map, whatever layout the family uses.

Transformer blocks give token sequences (prefix tokens - class, register, distillation - then the
patch tokens); Swin-like stages run channels-last (NHWC). Pure functions on tensors, as
pytorch-grad-cam's `reshape_transforms`; `transform_for` picks one by layout.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import nn

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W), a view."""
    if x.ndim != 4:
        raise ValueError(f"expected a channels-last (B, H, W, C) map, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2)


def token_grid(num_patches: int, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    """Patch grid (h, w) of `num_patches` tokens: the model's grid when it fits, else a square one."""
    if grid_size is not None and grid_size[0] * grid_size[1] == num_patches:
        return int(grid_size[0]), int(grid_size[1])
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    raise ValueError(
        f"cannot lay {num_patches} patch tokens on a grid: the model's grid is {grid_size} and the count is "
        "not a square; feed square images or pass reshape_transform= explicitly")


def tokens_to_nchw(x: torch.Tensor, num_prefix_tokens: int = 1,
                   grid_size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, prefix + h*w, C) transformer tokens -> (B, C, h, w) patch map, a view (no copy)."""
    if x.ndim != 3:
        raise ValueError(f"expected transformer tokens (B, N, C), got shape {tuple(x.shape)}")
    b, n, c = x.shape
    h, w = token_grid(n - num_prefix_tokens, grid_size)
    return x[:, num_prefix_tokens:].reshape(b, h, w, c).permute(0, 3, 1, 2)


def tokens_transform(model: nn.Module) -> ReshapeTransform:
    """`tokens_to_nchw` bound to the model's own prefix-token count and patch grid (as timm states them)."""
    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    # functools.partial of a module-level function pickles, so engines can travel to Ray actors.
    return functools.partial(tokens_to_nchw, num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
                             grid_size=tuple(grid) if grid is not None else None)


def transform_for(model: nn.Module, layout: str) -> ReshapeTransform | None:
    """The transform that turns a layer of `layout` ("nchw", "nhwc", "tokens") into (B, C, h, w); None for NCHW."""
    if layout == "tokens":
        return tokens_transform(model)
    if layout == "nhwc":
        return nhwc_to_nchw
    return None
