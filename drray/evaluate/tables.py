"""Reading a run's tables for evaluation: explanations (without the heavy binary columns), randomisation, overlays.

Everything goes through pyarrow datasets opened by `drray.evaluate.query.open_table`, so a run on
object storage is read the same way as a local folder. The explanations table can be large: it
is streamed batch by batch, and of each stored map only its peak share is kept.
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import pandas as pd

from drray.schema import EXPLANATIONS_SCHEMA, LESION_TYPES, NUM_GRADES, RANDOMISATION_SCHEMA

KEYS = ("dataset", "split", "model_id")
"""A group of images evaluated together (grading); explanation figures add `cam_method`."""

SCORE_COLUMNS = (
    "image_id", "dataset", "split", "label", "model_id", "pred", "referable_prob", "cam_method",
    "cam_entropy", "pointing_hit", "energy_in_lesions", *[f"energy_{t}" for t in LESION_TYPES],
    "od_energy", "lesion_area", "chance_hit", "ideal_energy", "quality_ok", "peak_y", "peak_x",
)
"""Explanation columns evaluation reads (plus `probs` as five p0..p4 columns and `peak_share`)."""

PROB_COLUMNS = tuple(f"p{g}" for g in range(NUM_GRADES))


def peak_share(blob: bytes | None, h: int | None, w: int | None) -> float:
    """max / sum of a stored map (the `cam` column, float16): 1 for a map on one pixel, 1/(h*w) for a flat one."""
    if blob is None or not h or not w:
        return float("nan")
    m = np.clip(np.frombuffer(blob, dtype=np.float16).astype(np.float64), 0.0, None)
    if m.size != int(h) * int(w):
        raise ValueError(f"a stored map of {m.size} values does not fit cam_h x cam_w = {h} x {w}")
    total = m.sum()
    return float(m.max() / total) if total > 0 else float("nan")


def _probs_frame(col) -> pd.DataFrame:
    """The `probs` list column as five float64 columns p0..p4 (nan where a row has none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(col)
    out = np.full((n, NUM_GRADES), np.nan)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy()
    ok = lengths == NUM_GRADES
    if ok.any():
        flat = pc.list_flatten(col.filter(pa.array(ok))).to_numpy(zero_copy_only=False)
        out[ok] = flat.astype(np.float64).reshape(-1, NUM_GRADES)
    return pd.DataFrame(out, columns=list(PROB_COLUMNS))


def read_explanations(location: str | os.PathLike) -> pd.DataFrame:
    """The explanations table at `location` (a folder, local or URI) as one DataFrame row per row.

    Columns: SCORE_COLUMNS (nullable ones as float, booleans as pandas' nullable boolean), p0..p4,
    and `peak_share` of the stored map. Raises FileNotFoundError when there is no table.
    """
    from drray.evaluate.query import open_table

    ds = open_table(location, partitioned=True)
    if ds is None:
        raise FileNotFoundError(f"no explanations table at {str(location)!r}; write one with `drray explain`")
    have = set(ds.schema.names)
    missing = [c for c in ("image_id", "label", "pred", "model_id", "cam_method") if c not in have]
    if missing:
        raise ValueError(f"explanations at {str(location)!r} lack columns {missing}")
    cols = [c for c in SCORE_COLUMNS if c in have] + [c for c in ("probs", "cam", "cam_h", "cam_w") if c in have]
    frames = []
    for batch in ds.to_batches(columns=cols):
        part = batch.select([c for c in SCORE_COLUMNS if c in have]).to_pandas()
        if "probs" in have:
            part = pd.concat([part, _probs_frame(batch.column("probs"))], axis=1)
        if "cam" in have:
            blobs = batch.column("cam").to_pylist()
            hs, ws = batch.column("cam_h").to_pylist(), batch.column("cam_w").to_pylist()
            part["peak_share"] = [peak_share(b, h, w) for b, h, w in zip(blobs, hs, ws)]
        frames.append(part)
    df = pd.concat(frames, ignore_index=True) if frames else _empty_scores()
    return _normalise(df)


def _empty_scores() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in SCORE_COLUMNS + PROB_COLUMNS + ("peak_share",)})


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes whatever the files held: grades as nullable Int64, scores as float64, flags as boolean."""
    df = df.copy()
    for c in SCORE_COLUMNS + PROB_COLUMNS + ("peak_share",):
        if c not in df:
            df[c] = None
    for c in ("label", "pred"):
        df[c] = pd.array(df[c], dtype="Int64")
    for c in ("pointing_hit", "quality_ok"):
        df[c] = pd.array(df[c], dtype="boolean")
    floats = [f.name for f in EXPLANATIONS_SCHEMA if f.name in df and str(f.type) in ("float", "float32")]
    for c in floats + list(PROB_COLUMNS) + ["peak_share"]:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    for c in ("image_id", "dataset", "split", "model_id", "cam_method"):
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df


def read_randomisation(location: str | os.PathLike) -> pd.DataFrame | None:
    """randomisation.parquet as a DataFrame, or None where the run has none."""
    from drray.evaluate.query import open_table

    ds = open_table(location, partitioned=False)
    if ds is None:
        return None
    cols = [c for c in RANDOMISATION_SCHEMA.names if c in ds.schema.names]
    df = ds.to_table(columns=cols).to_pandas()
    for c in RANDOMISATION_SCHEMA.names:
        if c not in df:
            df[c] = None
    df["cascade"] = pd.array(df["cascade"], dtype="Int64")
    df["label"] = pd.array(df["label"], dtype="Int64")
    df["pointing_hit"] = pd.array(df["pointing_hit"], dtype="boolean")
    for c in ("rank_corr", "chance_hit", "energy_in_lesions"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    return df


def read_overlays(location: str | os.PathLike, cam_method: str, image_ids: Iterable[str]) -> dict[str, bytes]:
    """image_id -> overlay_png of the given method's rows, for a few images (filters pushed to the files)."""
    import pyarrow.dataset as pads

    from drray.evaluate.query import open_table

    ids = sorted(set(image_ids))
    ds = open_table(location, partitioned=True)
    if ds is None or not ids or "overlay_png" not in ds.schema.names:
        return {}
    flt = pads.field("image_id").isin(ids) & (pads.field("cam_method") == cam_method)
    t = ds.to_table(columns=["image_id", "overlay_png"], filter=flt)
    return {i: b for i, b in zip(t.column("image_id").to_pylist(), t.column("overlay_png").to_pylist()) if b}
