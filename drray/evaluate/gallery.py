"""Which images the report shows: rules over the explanations table, never a hand-picked list.

Each gallery is one method's rows of one group, selected by a stated rule (`Gallery.rule`), ties
broken by image_id, so the same table always gives the same cards:

    exact        pred == label; grades taken in turn (4, 3, 2, 1, 0), in each the most confident first
    off_by_one   |pred - label| == 1; true grades in turn, in each the most confident (P(pred)) first
    gross        |pred - label| >= 2; the largest errors first, then the most confident
    typical      per true grade, the maps whose entropy is nearest the grade's median entropy
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from drray.schema import GRADES
from drray.evaluate.tables import PROB_COLUMNS


@dataclass(frozen=True)
class Gallery:
    key: str
    title: str
    rule: str


GALLERIES = (
    Gallery("exact", "Exact successes", "predicted grade = true grade; grades taken in turn from 4 down, "
            "in each the highest probability of the true grade first"),
    Gallery("off_by_one", "Off by one grade", "|predicted - true| = 1; true grades taken in turn from 4 down, "
            "in each the highest probability of the predicted grade first"),
    Gallery("gross", "Gross failures", "|predicted - true| >= 2; the largest errors first, then the highest "
            "probability of the predicted grade"),
)
TYPICAL = Gallery("typical", "Typical maps per grade", "per true grade, the maps whose entropy is nearest "
                  "that grade's median map entropy")


def _with_probs(rows: pd.DataFrame) -> pd.DataFrame:
    lab = rows[rows["label"].notna() & rows["pred"].notna()].copy()
    probs = lab[list(PROB_COLUMNS)].to_numpy(dtype=np.float64)
    y = lab["label"].to_numpy(dtype=np.int64)
    p = lab["pred"].to_numpy(dtype=np.int64)
    idx = np.arange(len(lab))
    lab["p_true"] = probs[idx, y] if len(lab) else []
    lab["p_pred"] = probs[idx, p] if len(lab) else []
    lab["error"] = np.abs(p - y)
    return lab


def _round_robin(df: pd.DataFrame, by: str, order: list[int], k: int) -> pd.DataFrame:
    """Up to k rows, taking the next row of each group in `order` in turn (each group already sorted)."""
    groups = {g: sub for g, sub in df.groupby(by, sort=False)}
    picked, depth = [], 0
    while len(picked) < k and any(depth < len(groups.get(g, ())) for g in order):
        for g in order:
            sub = groups.get(g)
            if sub is not None and depth < len(sub):
                picked.append(sub.index[depth])
                if len(picked) == k:
                    break
        depth += 1
    return df.loc[picked]


def select(rows: pd.DataFrame, key: str, k: int = 8) -> pd.DataFrame:
    """Up to k rows of one method for gallery `key` (exact, off_by_one, gross), by its rule."""
    lab = _with_probs(rows)
    grades_down = sorted(GRADES, reverse=True)
    if key == "exact":
        sub = lab[lab["error"] == 0].sort_values(["p_true", "image_id"], ascending=[False, True], kind="mergesort")
        return _round_robin(sub, "label", grades_down, k)
    if key == "off_by_one":
        sub = lab[lab["error"] == 1].sort_values(["p_pred", "image_id"], ascending=[False, True], kind="mergesort")
        return _round_robin(sub, "label", grades_down, k)
    if key == "gross":
        sub = lab[lab["error"] >= 2]
        return sub.sort_values(["error", "p_pred", "image_id"], ascending=[False, False, True],
                               kind="mergesort").head(k)
    raise ValueError(f"unknown gallery {key!r}; choose one of exact, off_by_one, gross")


def select_typical(rows: pd.DataFrame, per_grade: int = 3) -> dict[int, pd.DataFrame]:
    """Per true grade, the `per_grade` rows whose cam_entropy is nearest the grade's median."""
    lab = _with_probs(rows)
    lab = lab[np.isfinite(lab["cam_entropy"].to_numpy(dtype=np.float64))]
    out = {}
    for g in GRADES:
        sub = lab[lab["label"] == g]
        if sub.empty:
            continue
        dist = (sub["cam_entropy"] - sub["cam_entropy"].median()).abs()
        out[g] = sub.assign(_d=dist).sort_values(["_d", "image_id"], kind="mergesort").head(per_grade).drop(columns="_d")
    return out


def caption(row: pd.Series) -> dict[str, Any]:
    """What a card says under its images: grades, probabilities, whether the peak hit a lesion."""
    hit = row.get("pointing_hit")
    if hit is None or pd.isna(hit):
        peak = "no lesions marked"
    else:
        peak = "peak on a lesion" if bool(hit) else "peak missed the lesions"
    area, energy = row.get("lesion_area"), row.get("energy_in_lesions")
    lift = None
    if area is not None and energy is not None and np.isfinite(area) and np.isfinite(energy) and area > 0:
        lift = float(energy / area)
    return {
        "image_id": str(row["image_id"]),
        "label": int(row["label"]),
        "pred": int(row["pred"]),
        "p_pred": float(row["p_pred"]) if np.isfinite(row["p_pred"]) else None,
        "referable_prob": float(row["referable_prob"]) if np.isfinite(row["referable_prob"]) else None,
        "pointing_hit": None if hit is None or pd.isna(hit) else bool(hit),
        "peak": peak,
        "energy_lift": lift,
        "cam_entropy": float(row["cam_entropy"]) if np.isfinite(row["cam_entropy"]) else None,
    }
