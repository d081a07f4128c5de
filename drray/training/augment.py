"""Batched fundus augmentation in torch, on the training worker's device.

Images arrive from Ray Data as uint8 (B, S, S, 3); the model's `drray.models.model.to_unit` turns them
into (B, 3, S, S) floats in [0, 1] on the device, `augment` perturbs a whole batch with one
`grid_sample` call and a few elementwise ops, and the model's `standardize` makes them its input
(`drray.training.loop.train_step`), so augmentation costs no CPU decode time and scales with the
accelerator.

Fundus photographs have no canonical orientation (cameras, left/right eyes, scanned prints), so
flips and any rotation are label-preserving; colour changes stay mild because lesion colour
(red haemorrhages, yellow exudates) carries the grade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random perturbations (each drawn independently per image)."""

    hflip: float = 0.5
    """Probability of a horizontal flip."""
    vflip: float = 0.5
    """Probability of a vertical flip."""
    rotate_deg: float = 180.0
    """Rotation drawn uniformly in [-rotate_deg, rotate_deg]."""
    scale: tuple[float, float] = (0.9, 1.1)
    """Zoom factor range (> 1 zooms in)."""
    translate: float = 0.04
    """Shift as a share of the image side, in each direction."""
    brightness: float = 0.15
    """Multiplicative brightness in [1 - b, 1 + b]."""
    contrast: float = 0.15
    saturation: float = 0.1
    background_level: float = 8 / 255
    """Pixels darker than this in every channel are the black rim around the fundus: kept black."""


FUNDUS = AugmentConfig()


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo


def affine_matrices(n: int, cfg: AugmentConfig, generator: torch.Generator | None = None,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Random (n, 2, 3) matrices for `F.affine_grid`: output coordinates -> input coordinates."""
    angle = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, generator, device) * (math.pi / 180.0)
    scale = _uniform(n, cfg.scale[0], cfg.scale[1], generator, device)
    fx = torch.where(torch.rand(n, generator=generator, device=device) < cfg.hflip, -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=generator, device=device) < cfg.vflip, -1.0, 1.0)
    tx = _uniform(n, -cfg.translate, cfg.translate, generator, device) * 2  # grid coordinates span [-1, 1]
    ty = _uniform(n, -cfg.translate, cfg.translate, generator, device) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos * fx, -sin * fy, tx], dim=1),
            torch.stack([sin * fx, cos * fy, ty], dim=1),
        ],
        dim=1,
    )
    return theta


def augment(x: torch.Tensor, cfg: AugmentConfig = FUNDUS, generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomly flip, rotate, zoom, shift and colour-jitter a float batch (B, 3, H, W) in [0, 1]."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"augment expects a float batch (B, 3, H, W), got shape {tuple(x.shape)}")
    n, device = x.shape[0], x.device
    if n == 0:
        return x
    theta = affine_matrices(n, cfg, generator, device).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Zero padding: whatever rotates in from outside the frame is black, like the fundus rim.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    fundus = (x.amax(dim=1, keepdim=True) > cfg.background_level).to(x.dtype)
    b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator, device).view(n, 1, 1, 1)
    c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator, device).view(n, 1, 1, 1)
    s = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, generator, device).view(n, 1, 1, 1)
    x = x * b
    # Contrast around each image's mean over the fundus only, so the black rim does not drag it down.
    area = fundus.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    mean = (x * fundus).sum(dim=(2, 3), keepdim=True) / area
    x = (x - mean) * c + mean
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = gray + (x - gray) * s
    return (x * fundus).clamp_(0.0, 1.0)
