"""Grading figures of one group of images (dataset, split, model) from the explanations table.

The explanations table holds one row per image and CAM method, each with the same `pred` and
`probs`; grading counts every image once. `one_row_per_image` keeps, per image, its predict-only
row (cam_method null) where there is one, else the row of the first method by name: the same
choice as DuckDB's

    select distinct on (image_id) * from explanations order by image_id, cam_method nulls first

Intervals: QWK and AUC by percentile bootstrap over images (seeded), accuracy, sensitivity and
specificity by Wilson's score interval.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from drray.scores import grading as m
from drray.scores.intervals import bootstrap_auc_interval, wilson_interval
from drray.evaluate.tables import PROB_COLUMNS
from drray.schema import NUM_GRADES, REFERABLE_MIN_GRADE, REFERABLE_THRESHOLD
from drray.storage import finite_or_none

log = logging.getLogger(__name__)


def one_row_per_image(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per image_id: its predict-only row where present, else its first method's by name."""
    if rows.empty:
        return rows
    order = rows.assign(_no_method=rows["cam_method"].isna()).sort_values(
        ["image_id", "_no_method", "cam_method"], ascending=[True, False, True], kind="mergesort")
    _warn_on_disagreement(order)
    return order.drop_duplicates("image_id", keep="first").drop(columns="_no_method").reset_index(drop=True)


def _warn_on_disagreement(rows: pd.DataFrame) -> None:
    n_pred = rows.groupby("image_id")["pred"].nunique(dropna=False)
    bad = n_pred[n_pred > 1]
    if len(bad):
        log.warning("%d images have different grades in different methods' rows (first: %s); "
                    "grading uses each image's first row", len(bad), bad.index[0])


def _ci(pair: tuple[float, float]) -> tuple[float | None, float | None]:
    return finite_or_none(pair[0]), finite_or_none(pair[1])


def grading_metrics(images: pd.DataFrame, threshold: float = REFERABLE_THRESHOLD, n_boot: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Every grading figure of one group, one row per image (`one_row_per_image`), as strict-JSON values.

    Unlabelled images (label null) are counted, not graded. Referable DR is label >= 2, called when
    the table's `referable_prob` >= `threshold`.
    """
    labelled = images[images["label"].notna() & images["pred"].notna()]
    y = labelled["label"].to_numpy(dtype=np.int64)
    pred = labelled["pred"].to_numpy(dtype=np.int64)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_unlabelled": int(len(images) - len(labelled)),
        "n_quality_flagged": int((labelled["quality_ok"] == False).sum()),  # noqa: E712 (nullable boolean)
        "referable_threshold": float(threshold),
    }
    if y.size == 0:
        return {**out, **{k: None for k in ("qwk", "qwk_ci_low", "qwk_ci_high", "accuracy", "accuracy_ci_low",
                                             "accuracy_ci_high", "macro_f1", "referable_auc", "referable_auc_ci_low",
                                             "referable_auc_ci_high", "sensitivity", "sensitivity_ci_low",
                                             "sensitivity_ci_high", "specificity", "specificity_ci_low",
                                             "specificity_ci_high", "ece")},
                "n_referable": 0, "n_non_referable": 0,
                "confusion_matrix": np.zeros((NUM_GRADES, NUM_GRADES), int).tolist(),
                "label_counts": [0] * NUM_GRADES, "pred_counts": [0] * NUM_GRADES}
    ref = labelled["referable_prob"].to_numpy(dtype=np.float64)
    positive = y >= REFERABLE_MIN_GRADE
    called = ref >= threshold
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    tp, tn = int((called & positive).sum()), int((~called & ~positive).sum())
    correct = int((y == pred).sum())
    probs = labelled[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    has_probs = bool(np.isfinite(probs).all())
    qwk_lo, qwk_hi = m.bootstrap_qwk_ci(y, pred, n_boot=n_boot, seed=seed)
    out.update({
        "qwk": finite_or_none(m.quadratic_weighted_kappa(y, pred)),
        "qwk_ci_low": finite_or_none(qwk_lo),
        "qwk_ci_high": finite_or_none(qwk_hi),
        "accuracy": correct / y.size,
        "accuracy_ci_low": None, "accuracy_ci_high": None,
        "macro_f1": finite_or_none(m.macro_f1(y, pred)),
        "referable_auc": finite_or_none(m.roc_auc(positive, ref)) if np.isfinite(ref).all() else None,
        "referable_auc_ci_low": None, "referable_auc_ci_high": None,
        "n_referable": n_pos,
        "n_non_referable": n_neg,
        "sensitivity": tp / n_pos if n_pos else None,
        "sensitivity_ci_low": None, "sensitivity_ci_high": None,
        "specificity": tn / n_neg if n_neg else None,
        "specificity_ci_low": None, "specificity_ci_high": None,
        "ece": finite_or_none(m.expected_calibration_error(y, probs)) if has_probs else None,
        "confusion_matrix": m.confusion_matrix(y, pred).tolist(),
        "label_counts": np.bincount(y, minlength=NUM_GRADES).tolist(),
        "pred_counts": np.bincount(pred, minlength=NUM_GRADES).tolist(),
    })
    out["accuracy_ci_low"], out["accuracy_ci_high"] = _ci(wilson_interval(correct, int(y.size)))
    out["sensitivity_ci_low"], out["sensitivity_ci_high"] = _ci(wilson_interval(tp, n_pos))
    out["specificity_ci_low"], out["specificity_ci_high"] = _ci(wilson_interval(tn, n_neg))
    if out["referable_auc"] is not None:
        out["referable_auc_ci_low"], out["referable_auc_ci_high"] = _ci(
            bootstrap_auc_interval(positive, ref, n_boot=n_boot, seed=seed))
    return out


def roc_points(images: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) of referable DR over `referable_prob`, for the ROC plot."""
    from sklearn.metrics import roc_curve

    lab = images[images["label"].notna() & images["referable_prob"].notna()]
    positive = lab["label"].to_numpy(dtype=np.int64) >= REFERABLE_MIN_GRADE
    if positive.all() or not positive.any():
        return np.array([]), np.array([])
    fpr, tpr, _ = roc_curve(positive, lab["referable_prob"].to_numpy(dtype=np.float64))
    return fpr, tpr


def reliability(images: pd.DataFrame, n_bins: int = m.ECE_BINS) -> dict[str, np.ndarray]:
    """Per confidence bin (the bins of `expected_calibration_error`): count, mean confidence, accuracy."""
    lab = images[images["label"].notna()]
    probs = lab[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    ok = np.isfinite(probs).all(axis=1)
    probs, y = probs[ok], lab["label"].to_numpy(dtype=np.int64)[ok]
    conf = probs.max(axis=1) if probs.size else np.array([])
    correct = (probs.argmax(axis=1) == y).astype(np.float64) if probs.size else np.array([])
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        acc = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return {"count": count, "confidence": mean_conf, "accuracy": acc,
            "edges": np.linspace(0.0, 1.0, n_bins + 1)}
