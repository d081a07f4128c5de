"""Faithfulness of maps: does removing what a map highlights change the model's answer? (`cam.faithfulness`)

Three scores per image and map, all computed on the batch at once:

- ROAD (Rong et al. 2022, pytorch-grad-cam's ROADCombined): least- minus most-relevant-first
  removal with noisy linear imputation, averaged over percentiles. Higher is more faithful.
- Deletion AUC (Petsiuk et al. 2018, RISE): the probability of the explained grade as the most
  relevant pixels are replaced by a blurred copy of the image, step by step; the area under that
  curve (x in [0, 1]). Lower is more faithful: the answer collapses when the highlighted pixels go.
- Insertion AUC: the same probability as the most relevant pixels come back into the blurred
  image. Higher is more faithful.

The probability followed is that of the grade the map explains; for score-like targets (ordinal
"pred", "score") it is the predicted grade's, for "referable" P(grade >= 2). Each curve costs
`steps + 1` forward passes of the batch, so these scores are off unless asked for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drray.cam.targets import RowTarget, Target, probs_and_preds
from drray.schema import REFERABLE_MIN_GRADE

ROAD_PERCENTILES = (20, 40, 60, 80)
CURVE_STEPS = 8
"""Points of the deletion and insertion curves after the first: 1/8 of the pixels per step."""
BLUR_SIGMA_FRAC = 0.05
"""Blur of the baseline image, as a share of the side: removes lesions, keeps the fundus' colour."""


def road_scores(model: nn.Module, x: torch.Tensor, cams: np.ndarray, target: Target, grades: np.ndarray) -> np.ndarray:
    """(B,) ROAD scores of maps (B, H, W) for the normalised batch `x`; NaN where undefined."""
    from pytorch_grad_cam.metrics.road import ROADCombined

    road = ROADCombined(percentiles=list(ROAD_PERCENTILES))
    row_targets = [RowTarget(model, target, int(g)) for g in grades]
    scores = road(x, cams.astype(np.float32), row_targets, model)
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def _blurred(x: torch.Tensor) -> torch.Tensor:
    side = x.shape[-1]
    sigma = max(1.0, BLUR_SIGMA_FRAC * side)
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = (k / k.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
    pad = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = F.conv2d(pad, k, groups=x.shape[1])
    pad = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(pad, k.transpose(-1, -2), groups=x.shape[1])


def _followed_probability(probs: torch.Tensor, target: Target, grades: torch.Tensor) -> torch.Tensor:
    if target.kind == "referable":
        return probs[:, REFERABLE_MIN_GRADE:].sum(dim=1)
    return probs.gather(1, grades[:, None].clamp(0, probs.shape[1] - 1))[:, 0]


def deletion_insertion(model: nn.Module, x: torch.Tensor, cams: np.ndarray, target: Target,
                       grades: np.ndarray, preds: np.ndarray, steps: int = CURVE_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """((B,) deletion AUC, (B,) insertion AUC) of maps (B, H, W) on the normalised batch `x` (B, 3, H, W)."""
    b, _, h, w = x.shape
    maps = torch.as_tensor(cams, dtype=torch.float32, device=x.device).reshape(b, h * w)
    if maps.shape[1] != h * w:
        raise ValueError(f"maps of shape {cams.shape} do not match images of {h}x{w}")
    order = torch.argsort(maps, dim=1, descending=True)  # most relevant first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=x.device).expand(b, -1))
    rank = rank.reshape(b, 1, h, w)
    followed = torch.as_tensor(np.where(grades >= 0, grades, preds), dtype=torch.long, device=x.device)
    base = _blurred(x)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    deletion, insertion = [], []
    with torch.inference_mode():
        for f in fractions:
            top = rank < int(round(f * h * w))  # the share f of most relevant pixels
            for curve, image in ((deletion, torch.where(top, base, x)), (insertion, torch.where(top, x, base))):
                probs, _ = probs_and_preds(model, model(image).float())
                curve.append(_followed_probability(probs, target, followed).cpu().numpy())
    # Trapezoidal area over x in [0, 1].
    return (np.trapezoid(np.stack(deletion, axis=1), fractions, axis=1).astype(np.float32),
            np.trapezoid(np.stack(insertion, axis=1), fractions, axis=1).astype(np.float32))


def faithfulness_scores(model: nn.Module, x: torch.Tensor, cams: np.ndarray, target: Target, grades: np.ndarray,
                        preds: np.ndarray) -> dict[str, Any]:
    """{"road_score", "deletion_auc", "insertion_auc"}: (B,) float32 arrays for one method's maps."""
    deletion, insertion = deletion_insertion(model, x, cams, target, grades, preds)
    return {"road_score": road_scores(model, x, cams, target, grades),
            "deletion_auc": deletion, "insertion_auc": insertion}
