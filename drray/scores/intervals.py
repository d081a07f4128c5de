"""95% intervals for the figures drray reports: pure numpy.

- Proportions (hit rates, sensitivity, accuracy): Wilson score interval, which stays inside [0, 1]
  and behaves on small samples and on 0 or n successes, where the normal interval does not.
- Means of per-image scores (energy shares, entropy): mean +- z standard errors (sample standard
  deviation, ddof=1), the interval DuckDB's `avg(x) +- 1.96 * stddev_samp(x) / sqrt(count(x))` gives.
- Statistics without a closed form (AUC, a ratio of means): percentile bootstrap over images with
  a fixed seed, so the same table gives the same interval.

Every function returns (nan, nan) where the interval is undefined (no data).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

Z95 = 1.959963984540054
"""The standard normal's 97.5% quantile."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion `successes / n`; (nan, nan) for n == 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # The interval reaches 0 and 1 exactly at p = 0 and 1; floating point alone would stop just short,
    # leaving a perfect rate above its own upper bound.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_interval(values: Any, z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high) of the finite values: mean +- z * sd / sqrt(n); the interval is nan below 2 values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan
    half = z * float(v.std(ddof=1)) / math.sqrt(v.size)
    return m, m - half, m + half


def bootstrap_interval(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile interval of `statistic` over `n_boot` resamples of n items with replacement.

    statistic: maps a (b, n) array of resampled indices to b values (nan where undefined on a
    resample, e.g. an AUC drawn with one class only; those resamples are left out).
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, 1_000_000 // n)  # bounds the index array at ~8 MB whatever n is
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        out[start:start + b] = statistic(rng.integers(0, n, size=(b, n)))
    out = out[np.isfinite(out)]
    if out.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(out, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def bootstrap_ratio_interval(num: Any, den: Any, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(ratio, low, high) of mean(num) / mean(den) over paired per-image values (e.g. energy lift)."""
    a = np.asarray(num, dtype=np.float64)
    b = np.asarray(den, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"num and den must be 1-D of one length, got {a.shape} and {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size == 0 or b.sum() <= 0:
        return math.nan, math.nan, math.nan
    ratio = float(a.mean() / b.mean())

    def stat(idx: np.ndarray) -> np.ndarray:
        d = b[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(d > 0, a[idx].sum(axis=1) / d, np.nan)

    lo, hi = bootstrap_interval(stat, a.size, n_boot, seed)
    return ratio, lo, hi


def bootstrap_auc_interval(positive: Any, scores: Any, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC (resamples drawing one class only are left out)."""
    from drray.scores.grading import roc_auc

    pos = np.asarray(positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if pos.size == 0 or pos.all() or not pos.any():
        return math.nan, math.nan

    def stat(idx: np.ndarray) -> np.ndarray:
        return np.array([roc_auc(pos[i], s[i]) for i in idx])

    return bootstrap_interval(stat, pos.size, n_boot, seed)
