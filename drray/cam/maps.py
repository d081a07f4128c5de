"""Post-processing of raw CAMs: ReLU and per-image rescaling to [0, 1], resizing, as pytorch-grad-cam does."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS_NORMALISE = 1e-7


def _rescale_(cams: torch.Tensor) -> torch.Tensor:
    """In place: each map minus its minimum, over its range (+eps), as pytorch-grad-cam's scale_cam_image."""
    flat = cams.flatten(1)
    lo, hi = flat.amin(dim=1), flat.amax(dim=1)  # two reductions beat torch.aminmax on the CPU here
    shape = (-1,) + (1,) * (cams.ndim - 1)
    return cams.sub_(lo.reshape(shape)).div_((hi - lo).reshape(shape) + _EPS_NORMALISE)


def normalise_maps(cams: torch.Tensor) -> torch.Tensor:
    """ReLU, then each map shifted and scaled to [0, 1] (a constant map becomes 0), as pytorch-grad-cam does."""
    return _rescale_(cams.clamp_min(0))


def upsample_maps(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps in [0, 1] -> (B, *size), bilinear (half-pixel centres, as cv2.INTER_LINEAR), renormalised.

    Shrinking a map (a full-size zoo map to a stored thumbnail) low-pass filters it first. Both
    filters have non-negative weights, so no ReLU is needed before rescaling.
    """
    h, w = cams.shape[-2:]
    if (h, w) == tuple(size):
        return cams
    shrink = size[0] < h or size[1] < w
    resized = F.interpolate(cams[:, None], size=tuple(size), mode="bilinear", align_corners=False,
                            antialias=shrink)[:, 0]
    return _rescale_(resized)


def fuse_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """One map from the maps of several layers, each (B, H, W) in [0, 1]: their geometric mean, rescaled to [0, 1].

    A location stands out only where every layer's map does: a fine layer places small lesions
    precisely, a coarser one, with more of the network above it, says which of its hot spots the
    grade rests on. The geometric mean keeps a map's scale (fusing a map with itself returns it),
    so fused and single-layer maps are scored on the same footing. A layer whose map is empty for
    an image (no positive evidence anywhere, as Grad-CAM gives when every weighted activation is
    negative) abstains for that image instead of blanking the others. One map is returned as it is.
    """
    if len(maps) == 1:
        return maps[0]
    stack = torch.stack(maps).clamp_min(0)  # (L, B, H, W)
    voting = stack.flatten(2).amax(dim=2) > 0  # (L, B): layers with any evidence, per image
    count = voting.sum(dim=0).to(stack.dtype)  # (B,)
    product = torch.where(voting[..., None, None], stack, torch.ones_like(stack)).prod(dim=0)
    fused = product.pow((1.0 / count.clamp_min(1))[:, None, None]) * (count > 0).to(stack.dtype)[:, None, None]
    return _rescale_(fused)


def fuse_on_finest_grid(maps: list[torch.Tensor]) -> torch.Tensor:
    """Layer maps of different grids, each (B, h_l, w_l) in [0, 1], fused (`fuse_maps`) on the finest grid.

    Coarser maps are upsampled (bilinear) to the finest map's grid first; the caller then upsamples
    the one fused map to the output size. Fusing at full image size instead gives nearly the same
    map at many times the cost: with a tiny CNN at 256 px, upsampling every layer's maps and
    multiplying them there took a tenth of the forward pass's time.
    """
    if len(maps) == 1:
        return maps[0]
    grid = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
    return fuse_maps([upsample_maps(m, tuple(grid)) for m in maps])
