"""Grading metrics for ICDR grades 0-4: pure numpy functions over labels, predictions and probabilities.

Conventions shared by every function:
- `labels` and `preds` are integer grades 0-4, `probs` an (N, 5) array whose rows sum to 1.
- Quadratic weighted kappa uses the fixed grade scale 0-4 (sklearn's
  `cohen_kappa_score(..., weights="quadratic", labels=[0, 1, 2, 3, 4])`), so the penalty of a
  disagreement is (grade difference)^2 whichever grades happen to occur in a sample. Where kappa
  is undefined (labels and predictions are both one and the same grade, so the chance agreement
  is already perfect) it is 0.0: agreement no better than chance, the value any constant
  predictor gets on varied labels. sklearn returns nan there; a search maximising QWK cannot
  rank nan.
- Referable DR is grade >= 2 (`drray.schema.REFERABLE_MIN_GRADE`); its probability is the sum of
  the probabilities of grades 2-4.
- Metrics with no defined value on a sample (AUC on one class, sensitivity without positives)
  are nan; `classification_report` turns them into None so the report is strict JSON.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from drray.schema import NUM_GRADES, REFERABLE_MIN_GRADE
from drray.storage import finite_or_none

ECE_BINS = 15


def as_grades(x: Any, what: str = "grades") -> np.ndarray:
    """An integer array of grades 0-4, or a ValueError naming the first bad value."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of grades, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            bad = arr[np.flatnonzero(np.mod(arr, 1) != 0)[0]]
            raise ValueError(f"{what} must hold integer grades 0-{NUM_GRADES - 1}, got {bad!r}")
    arr = arr.astype(np.int64)
    out = (arr < 0) | (arr >= NUM_GRADES)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise ValueError(f"{what}[{i}] = {arr[i]} is outside ICDR grades 0-{NUM_GRADES - 1}")
    return arr


def _pair(labels: Any, preds: Any) -> tuple[np.ndarray, np.ndarray]:
    y, p = as_grades(labels, "labels"), as_grades(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {y.size} vs {p.size}")
    return y, p


def _probs(probs: Any, n: int | None = None) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != NUM_GRADES:
        raise ValueError(f"probs must be an (N, {NUM_GRADES}) array, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"probs has {arr.shape[0]} rows but there are {n} labels")
    return arr


def confusion_matrix(labels: Any, preds: Any) -> np.ndarray:
    """(5, 5) int64 counts, rows = true grade, columns = predicted grade, fixed order 0-4."""
    y, p = _pair(labels, preds)
    return np.bincount(y * NUM_GRADES + p, minlength=NUM_GRADES * NUM_GRADES).reshape(NUM_GRADES, NUM_GRADES)


_QW = np.subtract.outer(np.arange(NUM_GRADES), np.arange(NUM_GRADES)).astype(np.float64) ** 2


def kappa_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of one (5, 5) confusion matrix or a stack (..., 5, 5); 0.0 where undefined."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.sum(axis=(-2, -1))
    expected = cm.sum(axis=-1)[..., :, None] * cm.sum(axis=-2)[..., None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = expected / n[..., None, None]
        observed_w = (cm * _QW).sum(axis=(-2, -1))
        expected_w = (expected * _QW).sum(axis=(-2, -1))
        kappa = 1.0 - observed_w / expected_w
    # expected_w == 0 exactly when labels and predictions share a single grade (or N == 0).
    return np.where(expected_w > 0, kappa, 0.0)


def quadratic_weighted_kappa(labels: Any, preds: Any) -> float:
    """Cohen's kappa with quadratic weights on grades 0-4 (see the module docstring for the undefined case)."""
    return float(kappa_from_confusion(confusion_matrix(labels, preds)))


def accuracy(labels: Any, preds: Any) -> float:
    """Share of exact grade matches; nan for an empty sample."""
    y, p = _pair(labels, preds)
    return float(np.mean(y == p)) if y.size else math.nan


def macro_f1(labels: Any, preds: Any) -> float:
    """Unweighted mean F1 over the grades present in labels or preds (sklearn's `average="macro"`).

    A grade never predicted (or never true) contributes F1 = 0, as sklearn's zero_division=0.
    """
    cm = confusion_matrix(labels, preds)
    tp = np.diag(cm).astype(np.float64)
    true_n, pred_n = cm.sum(axis=1), cm.sum(axis=0)
    present = (true_n + pred_n) > 0
    if not present.any():
        return math.nan
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (true + predicted); > 0 denominators for present grades.
    f1 = 2.0 * tp[present] / (true_n[present] + pred_n[present])
    return float(f1.mean())


def referable_prob(probs: Any) -> np.ndarray:
    """P(grade >= 2) per row of an (N, 5) probability array."""
    return _probs(probs)[:, REFERABLE_MIN_GRADE:].sum(axis=1)


def is_referable(labels: Any) -> np.ndarray:
    """Boolean referable-DR flag (grade >= 2) per label."""
    return as_grades(labels, "labels") >= REFERABLE_MIN_GRADE


def roc_auc(positive: Any, scores: Any) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); nan without both classes."""
    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if pos.shape != s.shape or pos.ndim != 1:
        raise ValueError(f"positive flags and scores must be 1-D of one length, got {pos.shape} and {s.shape}")
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Mid-ranks: every member of a run of equal scores gets the mean of the run's ranks.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    mid = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(mid, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def referable_auc(labels: Any, probs: Any) -> float:
    """ROC AUC of P(grade >= 2) for referable DR; nan when the sample holds one side only."""
    y = is_referable(labels)
    return roc_auc(y, referable_prob(_probs(probs, y.size)))


def sensitivity_specificity(labels: Any, scores: Any, threshold: float = 0.5) -> tuple[float, float]:
    """Referable-DR sensitivity and specificity when `scores` >= `threshold` means referable.

    scores: P(grade >= 2) per image (e.g. `referable_prob(probs)`). Each value is nan when the
    sample has no referable (or no non-referable) image.
    """
    y = is_referable(labels)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores must have one value per label: {s.shape} vs {y.shape}")
    called = s >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    sens = float((called & y).sum() / n_pos) if n_pos else math.nan
    spec = float((~called & ~y).sum() / n_neg) if n_neg else math.nan
    return sens, spec


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (Guo et al. 2017) with `n_bins` equal-width bins.

    Each image falls in the bin (k/n, (k+1)/n] holding its top probability; ECE is the
    count-weighted mean over bins of |accuracy - mean confidence|, where accuracy counts
    argmax(probs) == label. nan for an empty sample.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = as_grades(labels, "labels")
    p = _probs(probs, y.size)
    if y.size == 0:
        return math.nan
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=correct, minlength=n_bins) - np.bincount(bins, weights=conf, minlength=n_bins)
    # |sum(correct) - sum(conf)| per bin / N is the same as weight * |acc - conf|.
    return float(np.abs(gap[count > 0]).sum() / y.size)


def bootstrap_qwk_ci(
    labels: Any, preds: Any, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of QWK: `n_boot` resamples of images with replacement.

    Same seed, same interval. nan, nan for an empty sample.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y, p = _pair(labels, preds)
    if y.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    cells = y * NUM_GRADES + p
    kappas = np.empty(n_boot)
    # Chunks bound memory at ~8 MB of indices whatever the sample size.
    chunk = max(1, 1_000_000 // y.size)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, y.size, size=(b, y.size))
        flat = (np.arange(b)[:, None] * NUM_GRADES**2 + cells[idx]).ravel()
        cms = np.bincount(flat, minlength=b * NUM_GRADES**2).reshape(b, NUM_GRADES, NUM_GRADES)
        kappas[start:start + b] = kappa_from_confusion(cms)
    lo, hi = np.quantile(kappas, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def classification_report(
    labels: Any,
    probs: Any,
    referable_threshold: float = 0.5,
    preds: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every grading metric in one JSON-serialisable dict (undefined values are None).

    preds: the model's grades; default argmax(probs). Pass `DRModel.predict` output for an
    ordinal head, whose grade is the one its fitted thresholds give.
    """
    y = as_grades(labels, "labels")
    p = _probs(probs, y.size)
    pr = p.argmax(axis=1) if preds is None else as_grades(preds, "preds")
    if pr.shape != y.shape:
        raise ValueError(f"preds must have one grade per label: {pr.shape} vs {y.shape}")
    ref = referable_prob(p)
    sens, spec = sensitivity_specificity(y, ref, referable_threshold)
    ci_lo, ci_hi = bootstrap_qwk_ci(y, pr, n_boot=n_boot, seed=seed)
    return {
        "n": int(y.size),
        "qwk": finite_or_none(quadratic_weighted_kappa(y, pr)),
        "qwk_ci_low": finite_or_none(ci_lo),
        "qwk_ci_high": finite_or_none(ci_hi),
        "accuracy": finite_or_none(accuracy(y, pr)),
        "macro_f1": finite_or_none(macro_f1(y, pr)),
        "referable_auc": finite_or_none(roc_auc(y >= REFERABLE_MIN_GRADE, ref)),
        "referable_threshold": float(referable_threshold),
        "sensitivity": finite_or_none(sens),
        "specificity": finite_or_none(spec),
        "ece": finite_or_none(expected_calibration_error(y, p)),
        "confusion_matrix": confusion_matrix(y, pr).tolist(),
        "label_counts": np.bincount(y, minlength=NUM_GRADES).tolist(),
        "pred_counts": np.bincount(pr, minlength=NUM_GRADES).tolist(),
    }
