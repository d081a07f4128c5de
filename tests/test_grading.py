"""drray.scores.grading against scikit-learn on random samples, plus the edge cases each metric defines."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from drray.scores import grading as M

GRADES = [0, 1, 2, 3, 4]
SEEDS = [0, 1, 2, 3, 4]


def _sample(seed: int, n: int = 200):
    """Labels, correlated predictions and Dirichlet probabilities, as a noisy grader would give."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(5, size=n, p=[0.45, 0.1, 0.25, 0.08, 0.12])
    preds = np.clip(labels + rng.integers(-2, 3, size=n) * (rng.random(n) < 0.5), 0, 4)
    probs = rng.dirichlet(np.ones(5), size=n)
    probs[np.arange(n), preds] += rng.random(n) * 2
    probs /= probs.sum(axis=1, keepdims=True)
    return labels, preds, probs


def _sk_qwk(y, p):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skm.cohen_kappa_score(y, p, weights="quadratic", labels=GRADES, replace_undefined_by=0.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_qwk_matches_sklearn(seed):
    y, p, _ = _sample(seed, n=50 + 37 * seed)
    assert M.quadratic_weighted_kappa(y, p) == pytest.approx(_sk_qwk(y, p), abs=1e-12)
    # With every grade present sklearn's default label set is the same scale.
    if len(set(y) | set(p)) == 5:
        assert M.quadratic_weighted_kappa(y, p) == pytest.approx(
            skm.cohen_kappa_score(y, p, weights="quadratic"), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_qwk_uses_the_fixed_grade_scale_when_grades_are_missing(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 1, 4], size=60)
    p = rng.choice([0, 1, 4], size=60)
    assert M.quadratic_weighted_kappa(y, p) == pytest.approx(_sk_qwk(y, p), abs=1e-12)


def test_qwk_edge_cases():
    y = np.array([0, 1, 2, 3, 4, 2, 0])
    assert M.quadratic_weighted_kappa(y, y) == 1.0
    # A constant prediction on varied labels is chance agreement exactly.
    assert M.quadratic_weighted_kappa(y, np.full_like(y, 2)) == pytest.approx(0.0, abs=1e-12)
    # One grade everywhere: undefined, defined as 0.0 (sklearn gives nan by default).
    assert M.quadratic_weighted_kappa([3, 3, 3], [3, 3, 3]) == 0.0
    assert M.quadratic_weighted_kappa([], []) == 0.0
    # Reversed grades are worse than chance.
    assert M.quadratic_weighted_kappa(y, 4 - y) < 0


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="outside ICDR grades"):
        M.quadratic_weighted_kappa([0, 5], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        M.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="integer grades"):
        M.confusion_matrix([0.5, 1], [0, 1])
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        M.referable_auc([0, 1], np.ones((2, 4)))


@pytest.mark.parametrize("seed", SEEDS)
def test_accuracy_f1_confusion_match_sklearn(seed):
    y, p, _ = _sample(seed)
    assert M.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert M.macro_f1(y, p) == pytest.approx(skm.f1_score(y, p, average="macro"))
        # A grade that is never predicted and one that never occurs.
        y2 = np.where(y == 3, 2, y)
        p2 = np.where(p == 1, 0, p)
        assert M.macro_f1(y2, p2) == pytest.approx(skm.f1_score(y2, p2, average="macro"))
    cm = M.confusion_matrix(y, p)
    assert cm.shape == (5, 5)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, p, labels=GRADES))


def test_confusion_matrix_keeps_the_grade_order_when_grades_are_missing():
    cm = M.confusion_matrix([4, 4, 1], [4, 0, 1])
    assert cm[4, 4] == 1 and cm[4, 0] == 1 and cm[1, 1] == 1 and cm.sum() == 3


@pytest.mark.parametrize("seed", SEEDS)
def test_referable_auc_matches_sklearn(seed):
    y, _, probs = _sample(seed)
    ref = probs[:, 2:].sum(axis=1)
    assert M.referable_auc(y, probs) == pytest.approx(skm.roc_auc_score(y >= 2, ref), abs=1e-12)
    # Ties: coarse scores.
    coarse = np.round(ref, 1)
    assert M.roc_auc(y >= 2, coarse) == pytest.approx(skm.roc_auc_score(y >= 2, coarse), abs=1e-12)


def test_referable_auc_is_nan_with_one_class():
    probs = np.full((3, 5), 0.2)
    assert math.isnan(M.referable_auc([0, 1, 0], probs))
    assert math.isnan(M.referable_auc([2, 3, 4], probs))


@pytest.mark.parametrize("seed", SEEDS)
def test_sensitivity_specificity_match_sklearn(seed):
    y, _, probs = _sample(seed)
    ref = probs[:, 2:].sum(axis=1)
    for thr in (0.3, 0.5, 0.7):
        sens, spec = M.sensitivity_specificity(y, ref, thr)
        called = ref >= thr
        assert sens == pytest.approx(skm.recall_score(y >= 2, called))
        assert spec == pytest.approx(skm.recall_score(y < 2, ~called))
    sens, spec = M.sensitivity_specificity([0, 1], [0.9, 0.1])
    assert math.isnan(sens) and spec == 0.5


def _ece_reference(y, probs, n_bins=15):
    """Textbook loop: bins (k/n, (k+1)/n], weight |B|/N * |acc(B) - conf(B)|."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inb = (conf > lo) & (conf <= hi)
        if inb.any():
            total += inb.mean() * abs((pred[inb] == y[inb]).mean() - conf[inb].mean())
    return total


@pytest.mark.parametrize("seed", SEEDS)
def test_ece_matches_the_textbook_definition(seed):
    y, _, probs = _sample(seed)
    assert M.expected_calibration_error(y, probs) == pytest.approx(_ece_reference(y, probs), abs=1e-12)
    assert M.expected_calibration_error(y, probs, n_bins=5) == pytest.approx(_ece_reference(y, probs, 5), abs=1e-12)


def test_ece_edge_cases():
    onehot = np.eye(5)[[0, 1, 2, 3, 4]]
    assert M.expected_calibration_error([0, 1, 2, 3, 4], onehot) == 0.0
    # Fully confident and always wrong: ECE 1.
    assert M.expected_calibration_error([1, 2, 3, 4, 0], onehot) == pytest.approx(1.0)


def test_bootstrap_ci_contains_the_estimate_and_is_deterministic():
    y, p, _ = _sample(7, n=300)
    qwk = M.quadratic_weighted_kappa(y, p)
    lo, hi = M.bootstrap_qwk_ci(y, p, n_boot=500, seed=3)
    assert lo < qwk < hi
    assert (lo, hi) == M.bootstrap_qwk_ci(y, p, n_boot=500, seed=3)
    assert (lo, hi) != M.bootstrap_qwk_ci(y, p, n_boot=500, seed=4)
    assert M.bootstrap_qwk_ci(y, y, n_boot=50) == (1.0, 1.0)


def test_bootstrap_matches_a_per_resample_loop():
    y, p, _ = _sample(11, n=40)
    rng = np.random.default_rng(5)
    idx = rng.integers(0, y.size, size=(30, y.size))
    loop = [M.quadratic_weighted_kappa(y[i], p[i]) for i in idx]
    expected = tuple(np.quantile(loop, [0.025, 0.975]))
    assert M.bootstrap_qwk_ci(y, p, n_boot=30, seed=5) == pytest.approx(expected, abs=1e-12)


def test_classification_report_bundles_every_metric_as_strict_json():
    y, p, probs = _sample(2)
    rep = M.classification_report(y, probs, preds=p, n_boot=100)
    json.dumps(rep, allow_nan=False)
    assert rep["n"] == len(y)
    assert rep["qwk"] == pytest.approx(M.quadratic_weighted_kappa(y, p))
    assert rep["qwk_ci_low"] <= rep["qwk"] <= rep["qwk_ci_high"]
    assert rep["referable_auc"] == pytest.approx(M.referable_auc(y, probs))
    assert np.array(rep["confusion_matrix"]).sum() == len(y)
    assert rep["label_counts"] == np.bincount(y, minlength=5).tolist()
    default = M.classification_report(y, probs, n_boot=10)
    assert default["pred_counts"] == np.bincount(probs.argmax(axis=1), minlength=5).tolist()
    # One class only: undefined metrics become None, not NaN.
    one = M.classification_report([0, 0, 1], np.full((3, 5), 0.2), n_boot=10)
    json.dumps(one, allow_nan=False)
    assert one["referable_auc"] is None and one["sensitivity"] is None
