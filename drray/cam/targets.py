"""What a CAM explains: the score whose gradient drives the map, per image.

Targets (the `target` argument of CamEngine):

- `"pred"`: classification head: the raw logit of the predicted grade (as pytorch-grad-cam's
  ClassifierOutputTarget). Ordinal head: the regression score itself (grade boundaries are
  thresholds on it, so the score is what the prediction rests on).
- a grade `0`-`4` (int or digit string), or one grade per image (a sequence or tensor of B):
  classification: that grade's raw logit; ordinal: log P(grade) from `grade_probs`.
- `"referable"`: log P(grade >= 2) from the grade probabilities (softmax of the logits, or the
  model's `grade_probs`). The log keeps gradients alive when the probability saturates near 1.
- `"score"`: ordinal: the regression score (same as "pred"); classification: the expected grade
  sum_g g * P(g), a continuous severity score.

The engine reports the grade explained per image, -1 where the score is not one grade's
(ordinal "pred", "score", "referable").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from drray.schema import NUM_GRADES, REFERABLE_MIN_GRADE

TARGET_NAMES = ("pred", "referable", "score")


@dataclass(frozen=True)
class Target:
    """A parsed target: a name from TARGET_NAMES, or "grade" with fixed grades."""

    kind: str
    grades: tuple[int, ...] | None = None
    """kind "grade": one grade for every image (length 1) or one per image."""


def parse_target(target: Any) -> Target:
    """Target from "pred" / "referable" / "score" / a grade / grades per image, or a ValueError saying what is allowed."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        key = target.strip().lower()
        if key in TARGET_NAMES:
            return Target(key)
        if key.lstrip("-").isdigit():
            return Target("grade", (int(key),))
        raise ValueError(f"unknown CAM target {target!r}; use one of {TARGET_NAMES} or a grade 0-{NUM_GRADES - 1}")
    if isinstance(target, bool):
        raise ValueError(f"CAM target {target!r} is a bool; use {TARGET_NAMES} or a grade 0-{NUM_GRADES - 1}")
    if isinstance(target, int):
        return Target("grade", (int(target),))
    if isinstance(target, torch.Tensor):
        target = target.reshape(-1).tolist()
    if isinstance(target, (list, tuple)) and target and all(isinstance(g, int) and not isinstance(g, bool)
                                                              for g in target):
        return Target("grade", tuple(int(g) for g in target))
    raise ValueError(
        f"CAM target {target!r} is neither one of {TARGET_NAMES}, a grade 0-{NUM_GRADES - 1}, nor one grade per image")


def head_of(model: nn.Module) -> str:
    """"ordinal" or "classification"; a plain module's outputs are classification logits."""
    head = getattr(model, "head", None)  # a timm model's `head` is a module, a drray model's a name
    return head if isinstance(head, str) else "classification"


def probs_and_preds(model: nn.Module, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) raw float outputs -> ((B, num_grades) probabilities, (B,) long predicted grades).

    A drray model maps outputs with its own `grade_probs` / `predict`; a plain module's outputs
    are logits: softmax and argmax.
    """
    grade_probs = getattr(model, "grade_probs", None)
    predict = getattr(model, "predict", None)
    if callable(grade_probs) and callable(predict):
        return grade_probs(outputs), predict(outputs).long()
    return torch.softmax(outputs, dim=1), outputs.argmax(dim=1)


def _log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def _check_grades(grades: torch.Tensor, num: int) -> None:
    bad = grades[(grades < 0) | (grades >= num)]
    if bad.numel():
        raise ValueError(f"CAM target grade {int(bad[0])} is outside 0-{num - 1}")


def target_scores(model: nn.Module, outputs: torch.Tensor, probs: torch.Tensor, preds: torch.Tensor,
                  target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """((B,) differentiable scores to explain, (B,) long grades explained, -1 where not a grade).

    outputs: the model's raw float outputs; probs: its grade probabilities, computed from those
    outputs with the graph kept (the "referable" and ordinal grade targets differentiate them).
    """
    batch = outputs.shape[0]
    ordinal = head_of(model) == "ordinal"
    none = torch.full((batch,), -1, dtype=torch.long, device=outputs.device)
    if target.kind == "referable":
        if probs.shape[1] <= REFERABLE_MIN_GRADE:
            raise ValueError(f"the 'referable' target needs grades 0-{NUM_GRADES - 1}, the model gives "
                             f"{probs.shape[1]} probabilities per image")
        return _log(probs[:, REFERABLE_MIN_GRADE:].sum(dim=1)), none
    if target.kind == "score" or (target.kind == "pred" and ordinal):
        if ordinal:
            return outputs[:, 0], none
        grades = torch.arange(probs.shape[1], dtype=probs.dtype, device=probs.device)
        return (probs * grades).sum(dim=1), none
    if target.kind == "pred":
        grades = preds
    else:
        grades = torch.as_tensor(target.grades, dtype=torch.long, device=outputs.device)
        if grades.numel() == 1:
            grades = grades.expand(batch)
        elif grades.numel() != batch:
            raise ValueError(f"{grades.numel()} target grades for a batch of {batch} images; give one or one per image")
    _check_grades(grades, probs.shape[1] if ordinal else outputs.shape[1])
    if ordinal:
        return _log(probs.gather(1, grades[:, None])[:, 0]), grades
    return outputs.gather(1, grades[:, None])[:, 0], grades


class RowTarget:
    """One image's target as pytorch-grad-cam calls it: a callable of one (K,) output row -> scalar.

    The zoo methods score every perturbed copy of an image with it, so it re-derives the score from
    the row alone (a fixed grade for "pred", decided once from the unperturbed image).
    """

    def __init__(self, model: nn.Module, target: Target, grade: int):
        self.model = model
        # "pred" and per-image grades become this image's grade; an ordinal "pred" stays the score.
        if target.kind == "grade" or (target.kind == "pred" and head_of(model) != "ordinal"):
            target = Target("grade", (grade,))
        self.target = target

    def __call__(self, row: torch.Tensor) -> torch.Tensor:
        outputs = row.reshape(1, -1).float()
        probs, preds = probs_and_preds(self.model, outputs)
        return target_scores(self.model, outputs, probs, preds, self.target)[0][0]
