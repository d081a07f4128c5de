"""The ordinal head: one regression score per image, cut into grades 0-4 by four thresholds.

Grade probabilities follow a cumulative logistic model around the thresholds t_0 < ... < t_3:

    P(grade > k) = sigmoid((s - t_k) / tau)                     k = 0..3
    P(grade = k) = P(grade > k - 1) - P(grade > k)               with P(grade > -1) = 1, P(grade > 4) = 0

With ascending thresholds the differences are non-negative and sum to 1 (they telescope); they
are still clamped at 0 and renormalised so hand-edited thresholds cannot give negative
probabilities. The predicted grade is the number of thresholds the score exceeds, which is also
the median of that distribution (P(grade > k) > 0.5 exactly when s > t_k), so grades, probabilities
and the fitted thresholds always agree. tau (the temperature) sets how sharp the probabilities
are; `fit_ordinal_temperature` fits it on validation scores by likelihood.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from drray.scores.grading import as_grades, kappa_from_confusion
from drray.schema import NUM_GRADES

DEFAULT_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
DEFAULT_TEMPERATURE = 0.5
NUM_THRESHOLDS = NUM_GRADES - 1


def check_thresholds(thresholds: Any) -> list[float]:
    """Four finite, strictly ascending thresholds as floats, or a ValueError saying which rule failed."""
    t = [float(x) for x in thresholds]
    if len(t) != NUM_THRESHOLDS:
        raise ValueError(f"an ordinal head needs {NUM_THRESHOLDS} thresholds (between grades 0-4), got {len(t)}: {t}")
    if not all(math.isfinite(x) for x in t) or any(b <= a for a, b in zip(t, t[1:])):
        raise ValueError(f"ordinal thresholds must be finite and strictly ascending, got {t}")
    return t


def ordinal_probs(scores, thresholds, temperature: float):
    """(B,) or (B, 1) scores -> (B, 5) grade probabilities (torch, differentiable; see module docstring)."""
    import torch

    s = scores.reshape(-1, 1)
    t = torch.as_tensor(thresholds, dtype=s.dtype, device=s.device).reshape(1, -1)
    above = torch.sigmoid((s - t) / temperature)  # P(grade > k), k = 0..3
    ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
    probs = (torch.cat([ones, above], dim=1) - torch.cat([above, zeros], dim=1)).clamp_min(0.0)
    return probs / probs.sum(dim=1, keepdim=True)


def ordinal_predict(scores, thresholds):
    """(B,) or (B, 1) scores -> (B,) long grades: how many thresholds each score exceeds."""
    import torch

    s = scores.reshape(-1, 1)
    t = torch.as_tensor(thresholds, dtype=s.dtype, device=s.device).reshape(1, -1)
    return (s > t).sum(dim=1)


def grades_from_scores(scores: np.ndarray, thresholds) -> np.ndarray:
    """Numpy twin of `ordinal_predict`, for metrics over stored scores."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    return (s > np.asarray(thresholds, dtype=np.float64).reshape(1, -1)).sum(axis=1)


def _scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = as_grades(np.asarray(labels).reshape(-1), "labels")
    if s.size != y.size:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if s.size == 0:
        raise ValueError("cannot fit an ordinal head on an empty validation set")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores hold {int((~np.isfinite(s)).sum())} non-finite values; the model diverged?")
    return s, y


def fit_ordinal_thresholds(scores: np.ndarray, labels: np.ndarray, max_sweeps: int = 20) -> list[float]:
    """Thresholds maximising QWK on validation scores, by exact coordinate search from the defaults.

    Each step moves one threshold to the best cut between its neighbours: every placement that
    changes a prediction (midpoints between consecutive distinct scores) is scored at once from
    cumulative label counts, so a step is O(N log N). Only strict improvements are taken, hence
    the result never scores below `DEFAULT_THRESHOLDS`; sweeps stop when none improves.
    """
    s, y = _scores_labels(scores, labels)
    t = list(DEFAULT_THRESHOLDS)
    best = float(kappa_from_confusion(_confusion(y, grades_from_scores(s, t))))
    for _ in range(max_sweeps):
        improved = False
        for k in range(NUM_THRESHOLDS):
            cut, kappa = _best_cut(s, y, t, k)
            if cut is not None and kappa > best + 1e-12:
                t[k], best, improved = cut, kappa, True
        if not improved:
            break
    return check_thresholds(t)


def cross_fitted_grades(scores: np.ndarray, labels: np.ndarray, folds: int = 2, seed: int = 0) -> np.ndarray:
    """Grades of validation scores from thresholds fitted on the *other* folds (cross-fitting).

    Thresholds fitted and scored on the same images flatter an ordinal head (they pick the cuts
    that suit those very images), which would favour it over a classification head whose argmax
    fits nothing. Folds are stratified by grade and fixed by `seed`, so the score is reproducible.
    """
    s, y = _scores_labels(scores, labels)
    if folds < 2:
        raise ValueError(f"cross-fitting needs >= 2 folds, got {folds}")
    rng = np.random.default_rng(seed)
    fold = np.empty(y.size, dtype=np.int64)
    for g in range(NUM_GRADES):
        idx = np.flatnonzero(y == g)
        # Dealt round-robin, starting one fold later per grade, so single images of rare grades spread out.
        fold[rng.permutation(idx)] = (np.arange(idx.size) + g) % folds
    out = np.empty(y.size, dtype=np.int64)
    for k in range(folds):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        if not train.any():
            raise ValueError("a cross-fitting fold has no training images; validation is too small")
        out[test] = grades_from_scores(s[test], fit_ordinal_thresholds(s[train], y[train]))
    return out


def _confusion(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.bincount(y * NUM_GRADES + p, minlength=NUM_GRADES**2).reshape(NUM_GRADES, NUM_GRADES)


def _best_cut(s: np.ndarray, y: np.ndarray, t: list[float], k: int) -> tuple[float | None, float]:
    """Best placement of threshold k between its neighbours, and the QWK it gives."""
    lo = t[k - 1] if k > 0 else -math.inf
    hi = t[k + 1] if k < NUM_THRESHOLDS - 1 else math.inf
    # Scores in (lo, hi] are graded k or k+1 by t_k; every other prediction is fixed.
    inside = (s > lo) & (s <= hi)
    if not inside.any():
        return None, -math.inf
    pred = grades_from_scores(s, t)
    base = _confusion(y[~inside], pred[~inside])
    order = np.argsort(s[inside], kind="mergesort")
    ws, wy = s[inside][order], y[inside][order]
    distinct = np.flatnonzero(np.r_[ws[1:] != ws[:-1], True])  # last index of each run of equal scores
    # Cut j puts the first m_j window scores (those <= the cut) in grade k, the rest in k+1.
    m = np.r_[0, distinct + 1]
    u = ws[distinct]
    below = u[0] - 0.5 if math.isinf(lo) else (lo + u[0]) / 2.0
    above = u[-1] + 0.5 if math.isinf(hi) else (u[-1] + hi) / 2.0
    cuts = np.r_[below, (u[:-1] + u[1:]) / 2.0, above]
    # A cut equal to hi would make the thresholds tie; the last placement then keeps the window at k.
    valid = (cuts > lo) & (cuts < hi)
    onehot = np.zeros((wy.size + 1, NUM_GRADES))
    onehot[1:][np.arange(wy.size), wy] = 1.0
    cum = np.cumsum(onehot, axis=0)[m]  # (cuts, 5): label counts of the window scores graded k
    cms = np.broadcast_to(base.astype(np.float64), (cuts.size, NUM_GRADES, NUM_GRADES)).copy()
    cms[:, :, k] += cum
    cms[:, :, k + 1] += cum[-1] - cum
    kappas = np.where(valid, kappa_from_confusion(cms), -math.inf)
    top = np.flatnonzero(kappas >= kappas.max() - 1e-12)
    # Among equally good cuts, the one nearest the current threshold: no gratuitous moves.
    j = top[np.argmin(np.abs(cuts[top] - t[k]))]
    return float(cuts[j]), float(kappas[j])


def fit_ordinal_temperature(
    scores: np.ndarray, labels: np.ndarray, thresholds, bounds: tuple[float, float] = (0.02, 5.0)
) -> float:
    """Temperature tau minimising the negative log-likelihood of the labels under `ordinal_probs`."""
    import torch
    from scipy.optimize import minimize_scalar

    s, y = _scores_labels(scores, labels)
    t = check_thresholds(thresholds)
    st, yt = torch.from_numpy(s), torch.from_numpy(y)

    def nll(log_tau: float) -> float:
        p = ordinal_probs(st, t, math.exp(log_tau))
        return float(-torch.log(p[torch.arange(yt.numel()), yt].clamp_min(1e-12)).mean())

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-4})
    return float(math.exp(res.x))
