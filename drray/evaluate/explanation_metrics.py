"""Explanation figures of one group (dataset, split, model, CAM method), each beside what chance scores.

Input: the rows of one CAM method (`drray.evaluate.tables.read_explanations`). Every figure is a
plain aggregate of table columns, so DuckDB gives the same number:

    pointing hit rate   avg(pointing_hit::int)          over rows where pointing_hit is not null (images with lesions)
      chance baseline   avg(chance_hit)                 same rows: what a peak dropped at random in the fundus scores
    energy in lesions   avg(energy_in_lesions)          same rows
      chance baseline   avg(lesion_area)                what a uniform map puts inside the lesions
    energy lift         avg(energy_in_lesions) / avg(lesion_area)   1 = no better than a uniform map
    median lift         median(energy_in_lesions / lesion_area)     each image's own lift, its median
    ideal lift          avg(ideal_energy) / avg(lesion_area)        the same for the ideal map on the layer's grid
                        (the masks drawn in its cells): what that resolution allows; median too
    per lesion type t   hit rate and avg(energy_t) over rows where energy_t is not null (images holding t);
                        the table has no per-type area, so energy_t has no chance baseline
    optic-disc share    avg(od_energy)                  over rows where od_energy is not null (a shortcut detector)
    concentration       avg(cam_entropy), avg(peak_share) per true grade (peak share: max / sum of the stored map)

Intervals: Wilson for hit rates, mean +- 1.96 standard errors for means, bootstrap for the lift.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from drray.scores.intervals import bootstrap_ratio_interval, mean_interval, wilson_interval
from drray.schema import GRADES, LESION_TYPES
from drray.storage import finite_or_none


def _f(x: Any) -> float | None:
    return finite_or_none(x)


def _floats(rows: pd.DataFrame, col: str) -> np.ndarray:
    return rows[col].to_numpy(dtype=np.float64, na_value=np.nan)


def hit_rate(hits: Any) -> dict[str, Any]:
    """n, hits, rate and Wilson interval of a boolean array (nulls already dropped)."""
    h = np.asarray(hits, dtype=bool)
    n, k = int(h.size), int(h.sum())
    lo, hi = wilson_interval(k, n)
    return {"n": n, "hits": k, "hit_rate": k / n if n else None, "hit_rate_ci_low": _f(lo), "hit_rate_ci_high": _f(hi)}


def mean_stat(values: Any, name: str) -> dict[str, Any]:
    """{name, name_ci_low, name_ci_high, name_n}: mean +- 1.96 standard errors of the finite values."""
    v = np.asarray(values, dtype=np.float64)
    mean, lo, hi = mean_interval(v)
    return {name: _f(mean), f"{name}_ci_low": _f(lo), f"{name}_ci_high": _f(hi), f"{name}_n": int(np.isfinite(v).sum())}


def localisation_summary(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Pointing game, energy in lesions and energy lift of the rows with lesions, beside their chance baselines."""
    les = rows[rows["pointing_hit"].notna()]
    out = hit_rate(les["pointing_hit"].to_numpy(dtype=bool))
    chance = _floats(les, "chance_hit")
    energy, area = _floats(les, "energy_in_lesions"), _floats(les, "lesion_area")
    out["chance_hit"] = _f(np.nanmean(chance)) if np.isfinite(chance).any() else None
    out.update(mean_stat(energy, "energy_in_lesions"))
    out["lesion_area"] = _f(np.nanmean(area)) if np.isfinite(area).any() else None
    lift, lo, hi = bootstrap_ratio_interval(energy, area, n_boot=n_boot, seed=seed)
    out.update({"energy_lift": _f(lift), "energy_lift_ci_low": _f(lo), "energy_lift_ci_high": _f(hi)})
    out["energy_lift_median"] = median_lift(energy, area)
    out.update(ideal_lift(les))
    return out


def ideal_lift(rows: pd.DataFrame) -> dict[str, Any]:
    """Pooled and median lift of the ideal map (`ideal_energy`: the masks drawn on the target layer's grid).

    The figure a map's own lift is read against: at stride 8 a grade-4 eye's many small
    haemorrhages cannot hold more of a map's mass than this even when the map shows each of them
    exactly. None for tables written before the column existed (or without masks).
    """
    if "ideal_energy" not in rows:
        return {"ideal_lift": None, "ideal_lift_median": None}
    ideal, area = _floats(rows, "ideal_energy"), _floats(rows, "lesion_area")
    ok = np.isfinite(ideal) & np.isfinite(area)
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = ideal[ok].mean() / area[ok].mean() if ok.any() else None
    return {"ideal_lift": _f(pooled), "ideal_lift_median": median_lift(ideal, area)}


def median_lift(energy: np.ndarray, area: np.ndarray) -> float | None:
    """Median over images of each image's energy in lesions / lesion area share; None without a finite one.

    The pooled lift (mean energy / mean area) weighs images by their lesion area: an image of large
    exudates, whose lift can reach only 1 / area, counts for many of microaneurysms. The median of
    per-image lifts says what a typical image's map does.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(energy, dtype=np.float64) / np.asarray(area, dtype=np.float64)
    ratio = ratio[np.isfinite(ratio)]
    return _f(np.median(ratio)) if ratio.size else None


def lesion_type_summary(rows: pd.DataFrame, lesion: str) -> dict[str, Any]:
    """Hit rate (any lesion) and energy on `lesion` over the images that hold that lesion type."""
    if lesion not in LESION_TYPES:
        raise ValueError(f"unknown lesion type {lesion!r}; drray knows {', '.join(LESION_TYPES)}")
    sub = rows[rows[f"energy_{lesion}"].notna()]
    les = sub[sub["pointing_hit"].notna()]
    out = hit_rate(les["pointing_hit"].to_numpy(dtype=bool))
    chance = _floats(les, "chance_hit")
    out["chance_hit"] = _f(np.nanmean(chance)) if np.isfinite(chance).any() else None
    out.update(mean_stat(_floats(sub, f"energy_{lesion}"), "energy"))
    out["images"] = int(len(sub))
    return out


def concentration_summary(rows: pd.DataFrame) -> dict[str, Any]:
    """How spread a group's maps are: mean normalised entropy (1 = flat) and mean peak share (max / sum)."""
    return {"n": int(len(rows)), **mean_stat(_floats(rows, "cam_entropy"), "cam_entropy"),
            **mean_stat(_floats(rows, "peak_share"), "peak_share")}


def explanation_metrics(rows: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All explanation figures of one method's rows (labelled or not, for the overall figures)."""
    labelled = rows[rows["label"].notna()]
    grades = labelled["label"].to_numpy(dtype=np.int64)
    od = _floats(rows, "od_energy")
    return {
        "n_rows": int(len(rows)),
        "localisation": {
            "all": localisation_summary(rows, n_boot, seed),
            "by_grade": {str(g): localisation_summary(labelled[grades == g], n_boot, seed) for g in GRADES},
            "by_lesion": {t: lesion_type_summary(rows, t) for t in LESION_TYPES},
        },
        "optic_disc": mean_stat(od, "od_energy"),
        "concentration": {
            "all": concentration_summary(rows),
            "by_grade": {str(g): concentration_summary(labelled[grades == g]) for g in GRADES},
        },
    }


def _expected_hits(les: pd.DataFrame) -> dict[str, Any]:
    """Empty maps and the tie-broken hit rate (randomisation.parquet's `expected_hit`) of one step's lesion rows.

    Tables written before those columns existed give neither (None)."""
    if "expected_hit" not in les or "empty_map" not in les:
        return {"empty_maps": None, "expected_hit_rate": None}
    exp = _floats(les, "expected_hit")
    return {"empty_maps": int(les["empty_map"].fillna(False).astype(bool).sum()),
            "expected_hit_rate": _f(np.nanmean(exp)) if np.isfinite(exp).any() else None}


def randomisation_summary(rand: pd.DataFrame) -> dict[str, Any] | None:
    """The model-randomisation check of one group: per cascade step, hit rate vs chance and rank correlation.

    `random_weights` is the step with the most blocks re-initialised (the whole network, where the
    check ran to the end): a map that still "hits" there shows the image, not what the model learned.
    `expected_hit_rate` scores empty maps at their image's chance rate (randomisation.parquet's
    `expected_hit`); `hit_rate` counts them as misses.
    """
    if rand is None or rand.empty:
        return None
    steps = []
    for c, sub in rand.groupby("cascade", sort=True, dropna=True):
        les = sub[sub["pointing_hit"].notna()]
        chance = _floats(les, "chance_hit")
        names = sub["reinitialised"].dropna()
        steps.append({
            "cascade": int(c),
            "reinitialised": str(names.iloc[0]) if len(names) else "",
            "images": int(sub["image_id"].nunique()),
            "draws": int(sub["draw"].nunique()) if "draw" in sub else 1,
            **hit_rate(les["pointing_hit"].to_numpy(dtype=bool)),
            "chance_hit": _f(np.nanmean(chance)) if np.isfinite(chance).any() else None,
            **_expected_hits(les),
            **mean_stat(_floats(les, "energy_in_lesions"), "energy_in_lesions"),
            **mean_stat(_floats(sub, "rank_corr"), "rank_corr"),
        })
    if not steps:
        return None
    last = max(steps, key=lambda s: s["cascade"])
    trained = next((s for s in steps if s["cascade"] == 0), None)
    return {"cascades": steps, "trained": trained, "random_weights": last if last["cascade"] > 0 else None}
