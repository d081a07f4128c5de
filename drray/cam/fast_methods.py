"""Batched, torch-native CAM formulas: (B, C, h, w) activations and gradients -> (B, h, w) maps.

Pure functions on tensors, on whatever device the tensors live; the engine calls them in float32.
Each formula follows pytorch-grad-cam 1.5.7's numpy implementation of the same method, so a map
here matches the library's map for the same model, layer and target (tests/test_cam.py checks it),
with one deliberate difference: EigenCAM's sign. An SVD leaves the sign of the first component
arbitrary (the library's map can flip between LAPACK builds); here it is fixed so the component
points along the summed activation, which makes maps reproducible across machines and devices.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

CamFormula = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

# Same epsilons as pytorch-grad-cam, so near-zero denominators behave alike.
_EPS_PLUSPLUS = 1e-6
_EPS_XGRAD = 1e-7
_EPS_NORMALISE = 1e-7


def _weighted_sum(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """sum_c w[b, c] * A[b, c, :, :] -> (B, h, w)."""
    return torch.einsum("bc,bchw->bhw", weights, acts)


def gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of the gradients."""
    return _weighted_sum(grads.mean(dim=(2, 3)), acts)


def gradcam_plusplus(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential-score closed form)."""
    grads2 = grads.pow(2)
    grads3 = grads2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    alpha = grads2 / (2 * grads2 + sum_acts * grads3 + _EPS_PLUSPLUS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (grads.clamp_min(0) * alpha).sum(dim=(2, 3))
    return _weighted_sum(weights, acts)


def xgradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): gradients weighted by the normalised activations."""
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    weights = (grads * acts / (sum_acts + _EPS_XGRAD)).sum(dim=(2, 3))
    return _weighted_sum(weights, acts)


def hirescam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): element-wise gradient x activation, summed over channels."""
    return (grads * acts).sum(dim=1)


def gradcam_elementwise(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Like HiResCAM with a ReLU on each element before the channel sum."""
    return (grads * acts).clamp_min(0).sum(dim=1)


def layercam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): positive gradients weight each activation."""
    return (grads.clamp_min(0) * acts).sum(dim=1)


def first_component_projection(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): each position's projection on the first principal component over channels.

    As pytorch-grad-cam's get_2d_projection: positions are samples, channels are features, centred
    per channel. Computed from the smaller of the two Gram matrices with a batched eigh instead of
    one SVD per image (X v1 = u1 * s1). The sign is fixed so the component points along the sum
    over channels (see the module docstring).
    """
    b, c, h, w = maps.shape
    x = torch.nan_to_num(maps.reshape(b, c, h * w).transpose(1, 2))  # (B, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    if h * w <= c:
        evals, evecs = torch.linalg.eigh(x @ x.transpose(1, 2))
        proj = evecs[..., -1] * evals[..., -1:].clamp_min(0).sqrt()
    else:
        _, evecs = torch.linalg.eigh(x.transpose(1, 2) @ x)
        proj = x @ evecs[..., -1:]
        proj = proj[..., 0]
    sign = torch.sign((proj * x.sum(dim=2)).sum(dim=1, keepdim=True))
    proj = proj * torch.where(sign == 0, torch.ones_like(sign), sign)
    return proj.reshape(b, h, w)


def eigencam(acts: torch.Tensor, grads: torch.Tensor | None = None) -> torch.Tensor:
    """EigenCAM (Muhammad & Yeasin 2020): first principal component of the activations; no gradients."""
    return first_component_projection(acts)


def eigengradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """EigenGradCAM: first principal component of gradient x activation."""
    return first_component_projection(grads * acts)


FAST_FORMULAS: dict[str, CamFormula] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plusplus,
    "xgradcam": xgradcam,
    "hirescam": hirescam,
    "gradcamelementwise": gradcam_elementwise,
    "layercam": layercam,
    "eigencam": eigencam,
    "eigengradcam": eigengradcam,
}


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
