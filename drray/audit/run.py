"""`drray audit`: a run's explanations -> strategies.parquet, strategy_of.parquet and, for suspect strategies, interventions.parquet.

    result = audit("runs/demo")          # after drray explain
    result.strategies                    # pandas, one row per strategy (schema.STRATEGIES_SCHEMA)

Three passes, none holding the table in memory:
1. the driver streams four columns of the explanations table (model, method, predicted class and
   the map grid) and keeps a seeded reservoir of at most `audit.fit_sample` grids per class,
   on which each class's strategies are fitted (drray.audit.strategies);
2. Ray Data tasks read the table again and assign every row to its strategy (by predicted grade,
   and by referable vs not); the driver merges per-strategy sums from the stream and writes
   strategy_of.parquet as it goes, so a million rows cost one pass and a few sums;
3. the suspect strategies' photographs are predicted again with their place removed and with a
   control place removed (drray.audit.intervention), on Ray Data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from drray import storage
from drray.audit.strategies import GROUPINGS, STRATEGY_COLUMNS
from drray.config.audit import AuditConfig
from drray.rundir import RunDir
from drray.schema import REFERABLE_THRESHOLD, STRATEGIES_SCHEMA, STRATEGY_OF_SCHEMA
from drray.scores.descriptors import GRID

log = logging.getLogger(__name__)

KEYS = ("image_id", "dataset", "split", "model_id", "cam_method")
NEEDED = ("map_grid", "pred", "referable_prob", "eye")
ROW_COLUMNS = (*KEYS, "label", "pred", "referable_prob", "map_grid", "od_energy", "rim_energy", "outside_energy",
               "mass_y", "mass_x", "mass_spread", "pointing_hit", "energy_in_lesions", "lesion_area", "eye")


def group_values(grouping: str, pred: np.ndarray, referable_prob: np.ndarray) -> np.ndarray:
    """Each row's class under a grouping: `grade2`, or `referable` / `not_referable`."""
    if grouping == "grade":
        return np.asarray([f"grade{int(p)}" for p in pred], dtype=object)
    return np.where(np.asarray(referable_prob, dtype=np.float64) >= REFERABLE_THRESHOLD, "referable",
                    "not_referable").astype(object)


def strategy_id(method: str, frame: str, value: str, j: int) -> str:
    return f"{method}/{frame}/{value}/s{j + 1}"


def decode_grids(blobs) -> np.ndarray:
    """A column of `map_grid` blobs -> (n, G*G) float32 in one copy."""
    blobs = list(blobs)
    if not blobs:
        return np.zeros((0, GRID * GRID), np.float32)
    return np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(len(blobs), GRID * GRID).astype(np.float32)


def left_eyes(eyes) -> np.ndarray:
    from drray.scores.descriptors import is_left

    return np.asarray([is_left(e) for e in eyes], dtype=bool)


@dataclass
class AuditResult:
    run_dir: str
    strategies: pd.DataFrame
    interventions: pd.DataFrame | None = None
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def suspects(self) -> pd.DataFrame:
        return self.strategies[self.strategies["verdict"] == "suspect"]

    def summary(self) -> str:
        s = self.strategies
        grade = s[s["grouping"] == "grade"]
        line = (f"{len(grade)} strategies of {self.rows} maps over {grade['class'].nunique()} predicted grades "
                f"(fundus and camera frames), {len(self.suspects)} suspect")
        for _, r in self.suspects.iterrows():
            conf = ("confirmed" if r["confirmed"] is True else "not tested" if r["confirmed"] is None
                    or pd.isna(r["confirmed"]) else "not confirmed")
            line += (f"\n  suspect {r['strategy']}: {r['images']} maps at {r['place']}; removing it changed "
                     f"{_pct(r['changed_removed'])} of predictions, the control {_pct(r['changed_control'])} ({conf})")
        return line


def _pct(x: Any) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x:.0%}"


def _explanations(run: RunDir):
    from drray.evaluate.query import open_table

    ds = open_table(run.explanations, partitioned=True)
    if ds is None:
        raise FileNotFoundError(f"{run.root} has no explanations table; run `drray explain` (or `drray demo`) first")
    missing = [c for c in NEEDED if c not in ds.schema.names]
    if missing:
        raise ValueError(f"the explanations of {run.root} have no {', '.join(missing)} column: they were written "
                         "before drray stored map descriptors; run `drray explain` again into a new run directory")
    return ds


# ------------------------------------------------------------------------------ pass 1: fit
class _Reservoir:
    """A seeded uniform sample of at most `cap` rows (grids and eyes) of one class, from a stream."""

    def __init__(self, cap: int):
        self.cap, self.seen = cap, 0
        self.grids = np.zeros((0, GRID * GRID), np.float16)
        self.left = np.zeros(0, bool)

    def add(self, grids: np.ndarray, left: np.ndarray, rng: np.random.Generator) -> None:
        room = max(self.cap - len(self.grids), 0)
        if room:
            self.grids = np.concatenate([self.grids, grids[:room].astype(np.float16)])
            self.left = np.concatenate([self.left, left[:room]])
        for i in range(min(room, len(grids)), len(grids)):  # reservoir sampling: every row equally likely kept
            j = int(rng.integers(0, self.seen + i + 1))
            if j < self.cap:
                self.grids[j], self.left[j] = grids[i], left[i]
        self.seen += len(grids)


def fit(ds, cfg: AuditConfig) -> dict[tuple, Any]:
    """(model_id, cam_method, frame, grouping, value) -> GroupModel, fitted on a seeded sample of each class.

    The same pass sums every map per method and frame: their mean is the baseline a strategy's place
    is the excess over."""
    from drray.audit.strategies import FRAMES, fit_group, to_frame

    rng = np.random.default_rng(cfg.seed)
    samples: dict[tuple, _Reservoir] = {}
    sums: dict[tuple, np.ndarray] = {}
    counts: dict[tuple, int] = {}
    scanner = ds.scanner(columns=["model_id", "cam_method", "pred", "referable_prob", "map_grid", "eye"],
                         filter=_mapped())
    for batch in scanner.to_batches():
        if not batch.num_rows:
            continue
        b = batch.to_pandas()
        grids, left = decode_grids(b["map_grid"]), left_eyes(b["eye"])
        for (model_id, method), idx in b.groupby(["model_id", "cam_method"], sort=False).indices.items():
            for frame in FRAMES:
                key = (model_id, method, frame)
                sums[key] = sums.get(key, 0) + to_frame(grids[idx], left[idx], frame).sum(axis=0, dtype=np.float64)
                counts[key] = counts.get(key, 0) + len(idx)
            for grouping in GROUPINGS:
                values = group_values(grouping, b["pred"].to_numpy()[idx], b["referable_prob"].to_numpy()[idx])
                for value in sorted(set(values)):
                    rows = idx[values == value]
                    samples.setdefault((model_id, method, grouping, value), _Reservoir(cfg.fit_sample)).add(
                        grids[rows], left[rows], rng)
    models = {}
    for (model_id, method, grouping, value), res in sorted(samples.items(), key=lambda kv: tuple(map(str, kv[0]))):
        for frame in FRAMES:
            baseline = sums[(model_id, method, frame)] / counts[(model_id, method, frame)]
            grids = to_frame(res.grids.astype(np.float32), res.left, frame)
            models[(model_id, method, frame, grouping, value)] = fit_group(grids, cfg, baseline)
    return models


def _mapped():
    import pyarrow.dataset as pads

    return pads.field("map_grid").is_valid() & pads.field("cam_method").is_valid()


# ------------------------------------------------------------------------------ pass 2: assign
def assign_batch(batch: pd.DataFrame, models: dict[tuple, Any]) -> pd.DataFrame:
    """Ray Data task: rows -> their strategy in each frame and grouping (the STRATEGY_COLUMNS)."""
    from drray.audit.strategies import to_frame

    batch = batch[batch["map_grid"].notna() & batch["cam_method"].notna()].reset_index(drop=True)
    grids, left = decode_grids(batch["map_grid"]), left_eyes(batch["eye"])
    out = batch.drop(columns=["map_grid"]).copy()
    for (frame, grouping), column in STRATEGY_COLUMNS.items():
        framed = to_frame(grids, left, frame)
        values = group_values(grouping, batch["pred"].to_numpy(), batch["referable_prob"].to_numpy())
        sid = np.full(len(batch), None, dtype=object)
        groups = pd.DataFrame({"m": batch["model_id"], "c": batch["cam_method"], "v": values})
        for (model_id, method, value), rows in groups.groupby(["m", "c", "v"], sort=False).indices.items():
            model = models.get((model_id, method, frame, grouping, value))
            if model is None:  # a class the fitting pass did not see (rows written since): no strategy
                continue
            sid[rows] = [strategy_id(method, frame, value, int(j)) for j in model.assign(framed[rows])]
        out[column] = sid
    out["grid"] = list(grids)
    out["left"] = left
    return out


def assign(run: RunDir, models: dict[tuple, Any], cfg: AuditConfig):
    """Every row to its strategies (Ray Data), streamed back: (tallies per strategy, tallies per class, rows seen)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from drray.cluster import connect

    connect()
    fs, path = storage.filesystem(run.explanations)
    ds = ray.data.read_parquet(path, filesystem=fs, file_extensions=["parquet"])
    names = [c for c in ROW_COLUMNS if c in ds.schema().names]
    ds = ds.select_columns(names).map_batches(assign_batch, fn_kwargs={"models": models}, batch_format="pandas",
                                              batch_size=1024, num_cpus=0.5)
    tallies: dict[tuple, Any] = {}
    totals: dict[tuple, Any] = {}
    places = {strategy_id(k[1], k[2], k[4], j): p for k, m in models.items() for j, p in enumerate(m.places)}
    seen = [0]

    def write(fs_out, out_path: str) -> None:
        with pq.ParquetWriter(out_path, STRATEGY_OF_SCHEMA, filesystem=fs_out) as writer:
            for batch in ds.iter_batches(batch_format="pandas", batch_size=4096):
                if batch.empty:
                    continue
                seen[0] += len(batch)
                _tally_batch(batch, tallies, totals, places, cfg)
                writer.write_table(pa.Table.from_pandas(batch[list(KEYS) + list(STRATEGY_COLUMNS.values())],
                                                        schema=STRATEGY_OF_SCHEMA, preserve_index=False))

    storage.write_atomic(run.strategy_of, write)
    if not seen[0]:
        raise ValueError(f"the explanations of {run.root} hold no maps to audit (predictions only?); "
                         "run `drray explain` with a CAM method")
    return tallies, totals, seen[0]


def _tally_batch(batch: pd.DataFrame, tallies: dict, totals: dict, places: dict, cfg: AuditConfig) -> None:
    """Merge one assigned batch into the per-strategy and per-class sums."""
    from drray.audit.strategies import Tally, tally_rows, to_frame

    grids, left = np.stack(batch["grid"].to_numpy()), batch["left"].to_numpy(bool)
    cols = _row_values(batch)
    for (frame, grouping), column in STRATEGY_COLUMNS.items():
        framed = to_frame(grids, left, frame)
        values = group_values(grouping, batch["pred"].to_numpy(), batch["referable_prob"].to_numpy())
        groups = pd.DataFrame({"m": batch["model_id"], "c": batch["cam_method"], "v": values, "s": batch[column]})
        for (model_id, method, value), rows in groups.groupby(["m", "c", "v"], sort=False).indices.items():
            key = (model_id, method, frame, grouping, value)
            tally_rows(totals.setdefault(key, Tally()), framed[rows], _sub(cols, rows), None, 0)
            for sid, sub in groups.iloc[rows].groupby("s", sort=False).indices.items():
                r = rows[sub]
                tally_rows(tallies.setdefault((key, sid), Tally()), framed[r], _sub(cols, r), places[sid],
                           cfg.member_density)


def _row_values(batch: pd.DataFrame) -> dict[str, np.ndarray]:
    def col(name: str) -> np.ndarray:
        if name not in batch:
            return np.full(len(batch), np.nan)
        return pd.to_numeric(batch[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)

    label, pred, lesion_area = col("label"), col("pred"), col("lesion_area")
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(lesion_area > 0, col("energy_in_lesions") / lesion_area, np.nan)
    return {
        "correct": np.where(np.isfinite(label), (label == pred).astype(np.float64), np.nan),
        "labelled": np.isfinite(label).astype(np.float64),
        "referable": (col("referable_prob") >= REFERABLE_THRESHOLD).astype(np.float64),
        "truly_referable": np.where(np.isfinite(label), (label >= 2).astype(np.float64), np.nan),
        **{c: col(c) for c in ("od_energy", "rim_energy", "outside_energy", "mass_y", "mass_x", "mass_spread",
                               "pointing_hit")},
        "lesion_lift": lift,
    }


def _sub(cols: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[rows] for k, v in cols.items()}


# ------------------------------------------------------------------------------ the table
RULE_FIELDS = ("place_mass", "max_place_area", "min_density", "member_density", "min_at_place", "min_images",
               "min_share", "lesion_lift")


def strategies_table(models: dict[tuple, Any], tallies: dict, totals: dict, cfg: AuditConfig) -> pd.DataFrame:
    """One row per strategy: its members' figures inside vs outside it, its place, centroid and verdict."""
    from drray.audit.strategies import judge, place_centre, place_name

    rows = []
    rule = json.dumps({k: getattr(cfg, k) for k in RULE_FIELDS})
    for key, model in models.items():
        model_id, method, frame, grouping, value = key
        total = totals.get(key)
        if total is None:
            continue
        for j, place in enumerate(model.places):
            sid = strategy_id(method, frame, value, j)
            t = tallies.get((key, sid))
            if t is None or t.n == 0:
                continue
            verdict = judge(t, place, total.n, cfg)
            centroid = (t.grid / t.n).reshape(GRID, GRID)
            py, px = place_centre(place)
            area = float(place.mean())

            def outside(name: str) -> float | None:
                c = total.counts.get(name, 0) - t.counts.get(name, 0)
                return (total.sums.get(name, 0.0) - t.sums.get(name, 0.0)) / c if c > 0 else None

            lifts = np.asarray(t.lesion_lifts)
            rows.append({
                "model_id": model_id, "cam_method": method, "frame": frame, "grouping": grouping, "class": value,
                "strategy": sid, "images": t.n, "class_images": total.n, "share": t.n / total.n,
                "k": model.k, "silhouette": model.silhouette,
                "centroid": centroid.astype(np.float16).tobytes(), "centroid_png": _centroid_png(centroid),
                "place": place_name(t, place, frame), "place_area": area, "place_y": py, "place_x": px,
                "place_cells": np.packbits(place).tobytes(),
                "at_place": t.mean("at_place"), "at_place_mass": t.mean("at_place_mass"),
                "density": (t.mean("at_place_mass") or 0.0) / area if area > 0 else None,
                "mass_y": t.mean("mass_y"), "mass_x": t.mean("mass_x"), "mass_spread": t.mean("mass_spread"),
                "od_energy": t.mean("od_energy"), "rim_energy": t.mean("rim_energy"),
                "outside_energy": t.mean("outside_energy"),
                "lesion_lift": float(np.median(lifts)) if lifts.size else None, "masked_images": int(lifts.size),
                "pointing_hit_rate": t.mean("pointing_hit"),
                "accuracy": t.mean("correct"), "accuracy_outside": outside("correct"),
                "referable_rate": t.mean("referable"), "referable_rate_outside": outside("referable"),
                "truly_referable_rate": t.mean("truly_referable"),
                "truly_referable_rate_outside": outside("truly_referable"),
                "verdict": "suspect" if verdict.suspect else "ok", "reason": verdict.reason, "rule": rule,
            })
    df = pd.DataFrame(rows, columns=[c for c in STRATEGIES_SCHEMA.names if c not in INTERVENTION_COLUMNS])
    return df.sort_values(["model_id", "cam_method", "frame", "grouping", "class", "images"],
                          ascending=[True, True, False, True, True, False], kind="stable").reset_index(drop=True)


INTERVENTION_COLUMNS = ("intervened", "changed_removed", "changed_control", "flips_removed", "flips_control",
                        "confirmed")


def _centroid_png(centroid: np.ndarray) -> bytes:
    """The centroid map, colourised at 96 px (nearest cells: the grid is what was clustered)."""
    import cv2

    from drray.cam.overlay import colorize, encode_png

    top = float(centroid.max())
    m = centroid / top if top > 0 else centroid
    return encode_png(colorize(cv2.resize(m.astype(np.float32), (96, 96), interpolation=cv2.INTER_NEAREST)))


# ------------------------------------------------------------------------------ entry point
def audit(run_dir: str | os.PathLike, cfg: AuditConfig | None = None, *, model_dir: str | None = None,
          manifest: str | None = None, intervene: bool = True, max_pixels: int | None = None,
          decode_cpus: float = 0.5, console: Any = None) -> AuditResult:
    """Find, judge and (for suspects) confirm the strategies of a run's maps; writes the three tables.

    model_dir / manifest: where the model and the photographs are (default: the run's own); only the
    intervention needs them.
    """
    cfg = cfg or AuditConfig()
    run = RunDir(run_dir)
    seconds = {}
    start = time.perf_counter()
    ds = _explanations(run)
    models = fit(ds, cfg)
    if not models:
        raise ValueError(f"the explanations of {run.root} hold no map grids: they predict only, or were written "
                         "before drray stored map descriptors; run `drray explain` with a CAM method")
    seconds["fit"] = time.perf_counter() - start
    t0 = time.perf_counter()
    tallies, totals, n = assign(run, models, cfg)
    strategies = strategies_table(models, tallies, totals, cfg)
    seconds["assign"] = time.perf_counter() - t0
    interventions = None
    strategies = strategies.assign(intervened=0, changed_removed=np.nan, changed_control=np.nan, flips_removed=np.nan,
                                   flips_control=np.nan, confirmed=None)
    suspects = strategies[strategies["verdict"] == "suspect"]
    if intervene and not suspects.empty:
        from drray.audit.intervention import confirm, intervene_on

        t0 = time.perf_counter()
        interventions = intervene_on(run, suspects, cfg, model_dir=model_dir or run.model,
                                     manifest=manifest or run.manifest, max_pixels=max_pixels,
                                     decode_cpus=decode_cpus)
        strategies = confirm(strategies, interventions, cfg)
        storage.write_parquet(run.interventions, _table(interventions, "INTERVENTIONS_SCHEMA"))
        seconds["intervene"] = time.perf_counter() - t0
    storage.write_parquet(run.strategies, _table(strategies, "STRATEGIES_SCHEMA"))
    seconds["total"] = time.perf_counter() - start
    log.info("audit of %s: %d rows, %d strategies, %d suspect (%.1f s)", run.root, n, len(strategies),
             len(suspects), seconds["total"])
    return AuditResult(run.root, strategies, interventions, n, seconds)


def _table(df: pd.DataFrame, schema_name: str):
    import pyarrow as pa

    from drray import schema

    s = getattr(schema, schema_name)
    return pa.Table.from_pandas(df[s.names], schema=s, preserve_index=False)
