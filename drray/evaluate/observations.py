"""The three observations drray began from, measured on the data at hand (pure functions over table rows).

(a) When the model is off by one grade, the map still localises lesions most of the time.
    Holds when the off-by-one images' pointing hit rate has its 95% Wilson lower bound above the
    chance rate (mean chance_hit of the same images).
(b) When the model is grossly wrong (off by two grades or more), the map is inaccurate.
    Holds when the gross errors' hit rate is below the exact predictions' with non-overlapping intervals.
(c) Grade-0 maps are diffuse, with no specific pattern.
    Holds when the grade-0 maps' mean entropy is above that of the maps of grades 1-4, with
    non-overlapping intervals (peak share, max / sum of the map, is reported beside it).

Each verdict is one of HOLDS, DOES_NOT_HOLD, INCONCLUSIVE (the direction is right but the intervals
overlap, or include chance) and TOO_FEW (a group below `min_n` images: no number is claimed).
Localisation counts only images with lesion masks (pointing_hit not null): grade-0 images usually
have none, so the exact bucket's hit rate is that of the exact predictions of grades 1-4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from drray.evaluate.explanation_metrics import concentration_summary, localisation_summary
from drray.schema import GRADES

BUCKETS = ("exact", "off_by_one", "gross")
BUCKET_NAMES = {"exact": "exact", "off_by_one": "off by one grade", "gross": "off by two grades or more"}
MIN_N = 10
"""Fewer images than this in a group: the report says so instead of printing its figure."""

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE, TOO_FEW = "holds", "does not hold", "inconclusive", "too few images"


@dataclass
class Observation:
    key: str
    """a, b or c."""
    claim: str
    status: str
    sentence: str
    """One line: the claim, the verdict, how strongly and on how many images."""
    n: int
    """Images behind the verdict (both groups for a comparison)."""
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    baseline: float | None = None
    """What `value` is compared with: chance (a), the exact predictions (b), grades 1-4 (c)."""
    baseline_metric: str = ""
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CLAIMS = {
    "a": "off by one grade, the map still points at a lesion",
    "b": "grossly wrong (off by two grades or more), the map misses the lesions",
    "c": "grade-0 maps are diffuse",
}


def error_bucket(labels: Any, preds: Any) -> np.ndarray:
    """exact / off_by_one / gross for each (label, pred) pair of integer grades."""
    d = np.abs(np.asarray(labels, dtype=np.int64) - np.asarray(preds, dtype=np.int64))
    return np.select([d == 0, d == 1], ["exact", "off_by_one"], default="gross").astype(object)


def bucket_localisation(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per error bucket: labelled images in it, and the localisation of those with lesions."""
    lab = rows[rows["label"].notna() & rows["pred"].notna()]
    b = error_bucket(lab["label"].to_numpy(dtype=np.int64), lab["pred"].to_numpy(dtype=np.int64))
    return {k: {"images": int((b == k).sum()), **localisation_summary(lab[b == k], n_boot, seed)} for k in BUCKETS}


def grade_concentration(rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Map concentration per true grade, and of grades 1-4 pooled (`lesion_grades`)."""
    lab = rows[rows["label"].notna()]
    y = lab["label"].to_numpy(dtype=np.int64)
    out = {str(g): concentration_summary(lab[y == g]) for g in GRADES}
    out["lesion_grades"] = concentration_summary(lab[y >= 1])
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _ci_pct(s: dict[str, Any], name: str = "hit_rate") -> str:
    lo, hi = s.get(f"{name}_ci_low"), s.get(f"{name}_ci_high")
    return "" if lo is None or hi is None else f" (95% CI {100 * lo:.0f}-{100 * hi:.0f}%)"


def _verdict(separated: bool, leaning: bool) -> str:
    """Holds when the confidence intervals are apart in the claimed direction; inconclusive when only the
    point estimates lean that way; otherwise it does not hold."""
    if separated:
        return HOLDS
    return INCONCLUSIVE if leaning else DOES_NOT_HOLD


def _too_few(key: str, what: str, n: int, min_n: int) -> Observation:
    sentence = f"({key}) {CLAIMS[key].capitalize()}: too few images to tell ({what}: {n}; need {min_n})."
    return Observation(key, CLAIMS[key], TOO_FEW, sentence, n)


def observe_off_by_one(buckets: dict[str, dict[str, Any]], min_n: int = MIN_N) -> Observation:
    """(a): the off-by-one hit rate against chance."""
    s = buckets["off_by_one"]
    n = s["n"]
    if n < min_n or s["hit_rate"] is None or s["chance_hit"] is None:
        return _too_few("a", "off-by-one images with lesions", n, min_n)
    rate, lo, hi, chance = s["hit_rate"], s["hit_rate_ci_low"], s["hit_rate_ci_high"], s["chance_hit"]
    status = _verdict(separated=lo > chance, leaning=rate > chance)
    lift = "" if s["energy_lift"] is None else f"; energy in lesions {s['energy_lift']:.1f}x a uniform map's"
    sentence = (f"(a) {CLAIMS['a'].capitalize()}: {status}. The peak hit a lesion in {_pct(rate)}{_ci_pct(s)} "
                f"of {n} off-by-one images with lesions, against {_pct(chance)} for a random peak "
                f"({100 * (rate - chance):+.0f} points{lift}).")
    return Observation("a", CLAIMS["a"], status, sentence, n, rate, lo, hi, chance, "chance_hit",
                       {"off_by_one": s})


def observe_gross_errors(buckets: dict[str, dict[str, Any]], min_n: int = MIN_N) -> Observation:
    """(b): the gross errors' hit rate against the exact predictions'."""
    g, e = buckets["gross"], buckets["exact"]
    if g["n"] < min_n or g["hit_rate"] is None:
        return _too_few("b", "gross errors with lesions", g["n"], min_n)
    if e["n"] < min_n or e["hit_rate"] is None:
        return _too_few("b", "exact predictions with lesions", e["n"], min_n)
    status = _verdict(separated=g["hit_rate_ci_high"] < e["hit_rate_ci_low"], leaning=g["hit_rate"] < e["hit_rate"])
    chance = "" if g["chance_hit"] is None else f"; chance {_pct(g['chance_hit'])}"
    sentence = (f"(b) {CLAIMS['b'].capitalize()}: {status}. The peak hit a lesion in {_pct(g['hit_rate'])}"
                f"{_ci_pct(g)} of {g['n']} gross errors, against {_pct(e['hit_rate'])}{_ci_pct(e)} of {e['n']} "
                f"exact predictions ({100 * (g['hit_rate'] - e['hit_rate']):+.0f} points{chance}).")
    return Observation("b", CLAIMS["b"], status, sentence, g["n"] + e["n"], g["hit_rate"], g["hit_rate_ci_low"],
                       g["hit_rate_ci_high"], e["hit_rate"], "hit_rate of exact predictions",
                       {"gross": g, "exact": e})


def observe_grade0_diffuse(conc: dict[str, dict[str, Any]], min_n: int = MIN_N) -> Observation:
    """(c): grade-0 maps' mean entropy against the maps of grades 1-4."""
    z, les = conc["0"], conc["lesion_grades"]
    if z["cam_entropy_n"] < min_n or z["cam_entropy"] is None:
        return _too_few("c", "grade-0 maps", z["cam_entropy_n"], min_n)
    if les["cam_entropy_n"] < min_n or les["cam_entropy"] is None:
        return _too_few("c", "maps of grades 1-4", les["cam_entropy_n"], min_n)
    e0, e1 = z["cam_entropy"], les["cam_entropy"]
    lo0, hi1 = z["cam_entropy_ci_low"], les["cam_entropy_ci_high"]
    status = _verdict(separated=lo0 is not None and hi1 is not None and lo0 > hi1, leaning=e0 > e1)

    def ci(s: dict[str, Any]) -> str:
        lo, hi = s["cam_entropy_ci_low"], s["cam_entropy_ci_high"]
        return "" if lo is None or hi is None else f" (95% CI {lo:.3f}-{hi:.3f})"

    peak = ""
    if z["peak_share"] is not None and les["peak_share"] is not None:
        peak = f"; peak share {z['peak_share']:.4f} vs {les['peak_share']:.4f}"
    sentence = (f"(c) {CLAIMS['c'].capitalize()}: {status}. Mean map entropy {e0:.3f}{ci(z)} on "
                f"{z['cam_entropy_n']} grade-0 maps, against {e1:.3f}{ci(les)} on {les['cam_entropy_n']} maps of "
                f"grades 1-4 ({e0 - e1:+.3f}{peak}; 1 = a flat map).")
    return Observation("c", CLAIMS["c"], status, sentence, z["cam_entropy_n"] + les["cam_entropy_n"], e0, lo0,
                       z["cam_entropy_ci_high"], e1, "cam_entropy of grades 1-4",
                       {"grade_0": z, "lesion_grades": les})


def observations(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0, min_n: int = MIN_N) -> dict[str, Any]:
    """Error buckets, concentration per grade and the three verdicts for one method's rows."""
    buckets = bucket_localisation(rows, n_boot, seed)
    conc = grade_concentration(rows)
    verdicts = [observe_off_by_one(buckets, min_n), observe_gross_errors(buckets, min_n),
                observe_grade0_diffuse(conc, min_n)]
    return {"min_n": min_n, "buckets": buckets, "concentration": conc,
            "verdicts": [v.as_dict() for v in verdicts]}
