"""The report's figures as PNG bytes (matplotlib, Agg backend: no display, nothing fetched)."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np

from drray.schema import GRADES

_DPI = 110


def _figure(w: float = 4.2, h: float = 3.4):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    # A bare Figure (no pyplot): no global state, safe in threads and Ray workers.
    return Figure(figsize=(w, h), dpi=_DPI)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def roc_png(fpr: np.ndarray, tpr: np.ndarray, auc: float | None, sens: float | None, spec: float | None,
            threshold: float) -> bytes:
    """Referable-DR ROC curve, with the operating point at the report's threshold."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="chance")
    if len(fpr):
        ax.plot(fpr, tpr, c="C0", lw=2, label=f"model (AUC {auc:.3f})" if auc is not None else "model")
    if sens is not None and spec is not None:
        ax.plot([1 - spec], [sens], "o", c="C3", label=f"P(referable) >= {threshold:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity",
           title="Referable DR (grade >= 2)")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def calibration_png(rel: dict[str, np.ndarray], ece: float | None) -> bytes:
    """Reliability diagram of the top-label probability (the bins expected calibration error uses)."""
    fig = _figure()
    ax = fig.add_subplot()
    edges = rel["edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    ok = rel["count"] > 0
    width = edges[1] - edges[0]
    # Bars: how often the top grade was right; markers: how sure the model was. The gap is the miscalibration.
    ax.bar(centres[ok], rel["accuracy"][ok], width=width * 0.9, color="C0", alpha=0.75, label="share correct")
    ax.plot(centres[ok], rel["confidence"][ok], "_", c="C3", ms=12, mew=2, label="mean top probability")
    ax.plot([0, 1], [0, 1], ls="--", c="0.5", lw=1, label="perfect calibration")
    for x, n in zip(centres[ok], rel["count"][ok]):
        ax.text(x, 0.01, str(int(n)), ha="center", va="bottom", fontsize=6, color="white")
    title = "Calibration" + (f" (ECE {ece:.3f})" if ece is not None else "")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="top-grade probability (argmax of probs)", ylabel="share correct",
           title=title)
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def buckets_png(buckets: dict[str, dict[str, Any]], names: dict[str, str], min_n: int) -> bytes:
    """Pointing hit rate per error bucket with 95% intervals, beside the chance rate of the same images."""
    fig = _figure(4.6, 3.4)
    ax = fig.add_subplot()
    keys = list(buckets)
    x = np.arange(len(keys))
    for i, k in enumerate(keys):
        s = buckets[k]
        if s["n"] < min_n or s["hit_rate"] is None:
            ax.text(i, 0.05, f"n={s['n']}\ntoo few", ha="center", va="bottom", fontsize=8, color="0.4")
            continue
        lo, hi = s["hit_rate_ci_low"], s["hit_rate_ci_high"]
        ax.bar(i, s["hit_rate"], width=0.6, color="C0", alpha=0.8)
        ax.errorbar(i, s["hit_rate"], yerr=_bar(s["hit_rate"], lo, hi), c="k", capsize=4)
        if s["chance_hit"] is not None:
            ax.hlines(s["chance_hit"], i - 0.35, i + 0.35, colors="C3", linestyles="--")
        ax.text(i, min(hi + 0.03, 0.97), f"n={s['n']}", ha="center", fontsize=8)
    ax.plot([], [], ls="--", c="C3", label="chance (random peak)")
    ax.set_xticks(x, [names.get(k, k) for k in keys], fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="peak on a lesion", title="Pointing game by error")
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def _bar(value: float, low: float, high: float) -> list[list[float]]:
    """matplotlib's yerr for an interval around `value` (never negative, which it refuses)."""
    return [[max(0.0, value - low)], [max(0.0, high - value)]]


def concentration_png(by_grade: dict[str, dict[str, Any]], min_n: int) -> bytes:
    """Mean map entropy per true grade with 95% intervals (higher: more diffuse)."""
    fig = _figure(4.6, 3.4)
    ax = fig.add_subplot()
    for g in GRADES:
        s = by_grade[str(g)]
        if s["cam_entropy_n"] < min_n or s["cam_entropy"] is None:
            ax.text(g, 0.02, f"n={s['cam_entropy_n']}\ntoo few", ha="center", va="bottom", fontsize=8,
                    color="0.4", transform=ax.get_xaxis_transform())
            continue
        m, lo, hi = s["cam_entropy"], s["cam_entropy_ci_low"], s["cam_entropy_ci_high"]
        ax.errorbar(g, m, yerr=None if lo is None else _bar(m, lo, hi), fmt="o", c="C0", capsize=4)
    ax.set_xticks(list(GRADES))
    ax.set_xlim(-0.5, len(GRADES) - 0.5)
    ax.set(xlabel="true grade", ylabel="normalised entropy (1 = flat)", title="How diffuse the maps are")
    return _png(fig)


def trials_png(qwk: Sequence[float], labels: Sequence[str]) -> bytes:
    """Best validation QWK per Tune trial."""
    fig = _figure(4.6, 0.5 + 0.35 * max(1, len(qwk)))
    ax = fig.add_subplot()
    y = np.arange(len(qwk))
    ax.barh(y, qwk, color="C2")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(min(0.0, min(qwk, default=0.0)), 1), xlabel="best validation QWK")
    return _png(fig)
