"""Graders' verdicts on maps, the check that needs no lesion masks: one Parquet file per verdict, and their figures.

Most real archives have no lesion masks, so the pointing game cannot score their maps; a grader can.
The Explore tab asks of one explanation row "does this map fall on the lesions?" and records the
answer here:

    review = record_review("runs/demo", reviewer="anna", image_id="synth_000123", cam_method="gradcam",
                           verdict="on", point_y=0.41, point_x=0.62)
    df = read_reviews("runs/demo")                       # every verdict, a pandas DataFrame
    figures = review_metrics(df, read_explanations("runs/demo/explanations"))

Storage. Each verdict is one small file, reviews/<review_id>.parquet (schema.REVIEWS_SCHEMA), written
under a temporary name and moved into place (`storage.write_parquet`); no file is ever rewritten, so a
server restart loses nothing and a reader (DuckDB, `drray query "select * from reviews"`) never sees
half a verdict. The file name is the verdict's id: a page that sends the same click twice (same
`review_id`) still leaves one file, and two clicks leave two. One process checks and writes an id
under a lock; two servers racing on one id still leave one file (the later move wins).

Figures (`review_metrics`). A reviewer's latest verdict on a map counts (a grader may change their mind).
Per dataset, split, model and CAM method, all maps and per error bucket (exact / off_by_one / gross,
`observations.error_bucket`): the reviewed hit rate, the share of "on" among "on" + "off" ("can't tell"
is left out and counted apart), with a Wilson 95% interval. A map weighs one whatever the number of
its reviewers: it counts as the share of them who said "on", so the interval is Wilson's on a
fractional count where maps have several reviewers (exact where each has one). Where several
reviewers saw one map, their agreement: the share of reviewer pairs on the same map who gave the same
verdict (three categories), beside what chance gives (the sum of the squared shares of each
verdict); and a kappa once `min_n` maps have two or more reviewers: Cohen's when exactly two
reviewers share those maps (each reviewer's own verdict shares are their chance), Fleiss' otherwise
(pooled shares; with unequal numbers of reviewers per map the pairs are pooled, which is Fleiss' own
formula when every map has as many).
"""

from __future__ import annotations

import math
import os
import threading
import unicodedata
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from drray.evaluate.observations import BUCKETS, MIN_N, error_bucket
from drray.rundir import RunDir
from drray.schema import REVIEWS_SCHEMA, VERDICTS

if TYPE_CHECKING:
    import pandas as pd

MAX_REVIEWER_CHARS = 100
MAP_KEYS = ("image_id", "dataset", "split", "model_id", "cam_method")
"""What names the map reviewed: the keys of its explanation row."""
VERDICT_NAMES = {"on": "on the lesions", "off": "off the lesions", "cant_tell": "can't tell"}

_write_lock = threading.Lock()  # the page's handlers run in threads: one id's check-then-write at a time


@dataclass(frozen=True)
class Review:
    """One grader's verdict on one map: a row of REVIEWS_SCHEMA."""

    review_id: str
    reviewer: str
    time: datetime
    image_id: str
    dataset: str | None
    split: str | None
    model_id: str | None
    cam_method: str
    verdict: str
    """One of VERDICTS."""
    point_y: float | None = None
    """Where the reviewer clicked the lesion: the pixel row of the shown overlay over its height, in [0, 1]."""
    point_x: float | None = None
    """The pixel column over the overlay's width, in [0, 1]."""

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------- validation
def check_reviewer(name: Any) -> str:
    """The reviewer's name, stripped; ValueError for an empty, too long or control-character name."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("give the reviewer's name: it is empty")
    name = unicodedata.normalize("NFC", name.strip())
    if len(name) > MAX_REVIEWER_CHARS:
        raise ValueError(f"reviewer name of {len(name)} characters is too long; keep it to {MAX_REVIEWER_CHARS}")
    bad = [c for c in name if unicodedata.category(c) == "Cc"]
    if bad:
        raise ValueError(f"reviewer name {name!r} holds control characters ({', '.join(map(repr, bad))}); "
                         "type it on one line")
    return name


def check_verdict(verdict: Any) -> str:
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}; choose one of: {', '.join(VERDICTS)}")
    return verdict


def check_point(point_y: Any, point_x: Any) -> tuple[float | None, float | None]:
    """(y, x) as floats in [0, 1], or (None, None); ValueError for half a point or one outside the overlay."""
    import numpy as np

    if point_y is None and point_x is None:
        return None, None
    if point_y is None or point_x is None:
        raise ValueError(f"a point needs both point_y and point_x, got point_y={point_y!r}, point_x={point_x!r}")
    out = []
    for name, v in (("point_y", point_y), ("point_x", point_x)):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} {v!r} is not a number") from None
        if not (math.isfinite(f) and 0.0 <= f <= 1.0):
            raise ValueError(f"{name} {v!r} is outside [0, 1] (a fraction of the shown overlay's side)")
        out.append(float(np.float32(f)))  # as stored (float32): the Review returned equals the one read back
    return out[0], out[1]


def check_review_id(review_id: Any) -> str:
    """The canonical form of a uuid (it names a file); ValueError for anything else."""
    try:
        return str(uuid.UUID(str(review_id)))
    except ValueError:
        raise ValueError(f"review_id {review_id!r} is not a uuid (e.g. {uuid.uuid4()})") from None


def new_review_id() -> str:
    return str(uuid.uuid4())


def review_path(run_dir: str | os.PathLike, review_id: str) -> str:
    """reviews/<review_id>.parquet of the run."""
    from drray import storage

    return storage.join(RunDir(run_dir).reviews, f"{check_review_id(review_id)}.parquet")


def _map_of(run_dir: str | os.PathLike, image_id: str, cam_method: str, dataset: str | None, split: str | None,
            model_id: str | None) -> dict[str, Any]:
    """The keys of the one explanation row the verdict is about; ValueError where there is none or several."""
    from drray.evaluate.query import connect, tables

    if not isinstance(image_id, str) or not image_id or not isinstance(cam_method, str) or not cam_method:
        raise ValueError(f"name the map reviewed: image_id {image_id!r}, cam_method {cam_method!r}")
    con = connect(run_dir)
    try:
        if "explanations" not in tables(con):
            raise ValueError(f"run directory {str(run_dir)!r} has no explanations table: nothing to review")
        sql = "select distinct dataset, split, model_id from explanations where image_id = ? and cam_method = ?"
        params: list[Any] = [image_id, cam_method]
        for column, value in (("dataset", dataset), ("split", split), ("model_id", model_id)):
            if value is not None:
                sql += f" and {column} = ?"
                params.append(value)
        found = con.execute(sql, params).fetchall()
    finally:
        con.close()
    if not found:
        raise ValueError(f"no explanation of image {image_id!r} with method {cam_method!r} in {str(run_dir)!r}: "
                         "review a map the run has")
    if len(found) > 1:
        raise ValueError(f"image {image_id!r} with method {cam_method!r} has {len(found)} rows in {str(run_dir)!r} "
                         f"(dataset, split, model_id: {found}); name dataset, split and model_id")
    d, s, m = found[0]
    return {"image_id": image_id, "dataset": d, "split": s, "model_id": m, "cam_method": cam_method}


# ---------------------------------------------------------------------------------------- storage
def _read_one(location: str) -> Review:
    from drray import storage

    row = storage.read_parquet(location).to_pylist()[0]
    return Review(**{k: row.get(k) for k in REVIEWS_SCHEMA.names})


def record_review(run_dir: str | os.PathLike, *, reviewer: str, image_id: str, cam_method: str, verdict: str,
                  point_y: float | None = None, point_x: float | None = None, dataset: str | None = None,
                  split: str | None = None, model_id: str | None = None,
                  review_id: str | None = None) -> Review:
    """Append one verdict to the run's reviews/ (one new file) and return it.

    review_id: the page's token for this click (a uuid); when its file exists already nothing is written
    and the stored verdict is returned, so a repeated submit records once. None: a new id.
    dataset, split, model_id: needed only where image_id and cam_method name several explanation rows.
    Raises ValueError, writing nothing, for a bad name, verdict or point, or a map the run does not have.
    """
    import pyarrow as pa

    from drray import storage

    review_id = check_review_id(review_id) if review_id is not None else new_review_id()
    location = review_path(run_dir, review_id)
    with _write_lock:
        if storage.is_file(location):
            return _read_one(location)
        reviewer = check_reviewer(reviewer)
        verdict = check_verdict(verdict)
        point_y, point_x = check_point(point_y, point_x)
        keys = _map_of(run_dir, image_id, cam_method, dataset, split, model_id)
        review = Review(review_id=review_id, reviewer=reviewer, time=datetime.now(timezone.utc), verdict=verdict,
                        point_y=point_y, point_x=point_x, **keys)
        table = pa.Table.from_pylist([review.as_row()], schema=REVIEWS_SCHEMA)
        storage.write_parquet(location, table)  # a temporary name, then moved into place
    return review


def empty_reviews() -> "pd.DataFrame":
    return REVIEWS_SCHEMA.empty_table().to_pandas()


def read_reviews(run_dir: str | os.PathLike) -> "pd.DataFrame":
    """Every verdict of the run (REVIEWS_SCHEMA's columns), oldest first; an empty frame where there is none."""
    return read_review_files(RunDir(run_dir).reviews)


def read_review_files(location: str | os.PathLike) -> "pd.DataFrame":
    """The verdicts in a reviews/ folder (local or URI); files still being written (.name.tmp) are not read."""
    from drray.evaluate.query import open_table

    ds = open_table(location, partitioned=True)
    if ds is None:
        return empty_reviews()
    cols = [c for c in REVIEWS_SCHEMA.names if c in ds.schema.names]
    df = ds.to_table(columns=cols).to_pandas()
    for c in REVIEWS_SCHEMA.names:
        if c not in df:
            df[c] = None
    return df[list(REVIEWS_SCHEMA.names)].sort_values(["time", "review_id"], kind="stable").reset_index(drop=True)


def latest_verdicts(reviews: "pd.DataFrame") -> "pd.DataFrame":
    """One row per reviewer and map: their latest verdict (ties in time: the larger review_id)."""
    if reviews.empty:
        return reviews.copy()
    keyed = reviews.assign(**{f"_{k}": reviews[k].fillna("") for k in MAP_KEYS})
    keyed = keyed.sort_values(["time", "review_id"], kind="stable")
    keyed = keyed.drop_duplicates(["reviewer", *(f"_{k}" for k in MAP_KEYS)], keep="last")
    return keyed.drop(columns=[f"_{k}" for k in MAP_KEYS]).reset_index(drop=True)


def map_verdicts(run_dir: str | os.PathLike, image_id: str, cam_method: str, dataset: str | None = None,
                 split: str | None = None, model_id: str | None = None) -> dict[str, int]:
    """How many reviewers gave each verdict on one map (their latest), and `reviewers` in all."""
    df = latest_verdicts(read_reviews(run_dir))
    sel = (df["image_id"] == image_id) & (df["cam_method"] == cam_method)
    for column, value in (("dataset", dataset), ("split", split), ("model_id", model_id)):
        if value is not None:
            sel &= df[column] == value
    df = df[sel]
    counts = {v: int((df["verdict"] == v).sum()) for v in VERDICTS}
    return {**counts, "reviewers": int(df["reviewer"].nunique())}


# ---------------------------------------------------------------------------------------- figures
def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def hit_rate(rows: "pd.DataFrame") -> dict[str, Any]:
    """Reviewed hit rate of latest verdicts on the maps of one group: each map the share of "on" of its verdicts."""
    from drray.scores.intervals import wilson_interval

    onoff = rows[rows["verdict"].isin(("on", "off"))]
    shares = (onoff["verdict"] == "on").groupby(onoff["image_id"]).mean()
    n = int(len(shares))
    successes = float(shares.sum())
    lo, hi = wilson_interval(successes, n)
    return {"n": n, "verdicts": int(len(onoff)), "on": int((rows["verdict"] == "on").sum()),
            "off": int((rows["verdict"] == "off").sum()), "cant_tell": int((rows["verdict"] == "cant_tell").sum()),
            "reviewers": int(rows["reviewer"].nunique()), "hit_rate": successes / n if n else None,
            "hit_rate_ci_low": _none_if_nan(lo), "hit_rate_ci_high": _none_if_nan(hi)}


def agreement(rows: "pd.DataFrame", min_n: int = MIN_N) -> dict[str, Any] | None:
    """Agreement of the reviewers of one group's maps reviewed more than once (latest verdicts); None: no such map."""
    import numpy as np
    import pandas as pd

    table = pd.crosstab(rows["image_id"], rows["verdict"]).reindex(columns=list(VERDICTS), fill_value=0)
    table = table[table.sum(axis=1) >= 2]
    if table.empty:
        return None
    counts = table.to_numpy(dtype=np.float64)
    per_map = counts.sum(axis=1)
    pairs = float((per_map * (per_map - 1) / 2).sum())
    agreed = float((counts * (counts - 1) / 2).sum())
    shares = counts.sum(axis=0) / counts.sum()
    chance = float((shares ** 2).sum())
    observed = agreed / pairs
    multi = rows[rows["image_id"].isin(table.index)]
    reviewers = sorted(multi["reviewer"].unique())
    maps = int(len(table))
    kappa, method = None, ("cohen" if len(reviewers) == 2 else "fleiss")
    if maps >= min_n:
        if method == "cohen":
            wide = multi.pivot(index="image_id", columns="reviewer", values="verdict")
            a, b = (wide[r] for r in reviewers)
            chance_ab = float(sum((a == v).mean() * (b == v).mean() for v in VERDICTS))
            kappa = None if chance_ab >= 1 else (observed - chance_ab) / (1 - chance_ab)
        else:
            kappa = None if chance >= 1 else (observed - chance) / (1 - chance)
    return {"maps": maps, "pairs": int(pairs), "reviewers": len(reviewers), "agreement": observed,
            "chance_agreement": chance, "kappa": kappa, "kappa_method": method, "min_n": min_n}


def review_metrics(reviews: "pd.DataFrame", explanations: "pd.DataFrame", min_n: int = MIN_N) -> dict[str, Any]:
    """The figures of the run's verdicts (see the module docstring): metrics.json's `reviews` entry.

    reviews: `read_reviews`; explanations: rows with the map keys, label and pred (`tables.read_explanations`).
    A verdict on a map without a label or prediction counts in its group's `all`, in no error bucket.
    """
    import numpy as np

    latest = latest_verdicts(reviews)
    out: dict[str, Any] = {"files": int(len(reviews)), "verdicts": int(len(latest)),
                           "reviewers": int(latest["reviewer"].nunique()) if len(latest) else 0, "min_n": min_n,
                           "groups": []}
    if latest.empty:
        return out
    key = [f"_{k}" for k in MAP_KEYS]
    grades = explanations[[*MAP_KEYS, "label", "pred"]]
    grades = grades.assign(**{f"_{k}": grades[k].fillna("") for k in MAP_KEYS})
    grades = grades.drop_duplicates(key)[[*key, "label", "pred"]]
    df = latest.assign(**{f"_{k}": latest[k].fillna("") for k in MAP_KEYS}).merge(grades, on=key, how="left")
    known = df["label"].notna() & df["pred"].notna()
    df["error_bucket"] = None
    if known.any():
        df.loc[known, "error_bucket"] = error_bucket(df.loc[known, "label"].to_numpy(dtype=np.int64),
                                                     df.loc[known, "pred"].to_numpy(dtype=np.int64))
    group_keys = ["_dataset", "_split", "_model_id", "_cam_method"]
    for _, rows in df.groupby(group_keys, sort=True):
        first = rows.iloc[0]
        out["groups"].append({
            **{k: first[k] for k in ("dataset", "split", "model_id", "cam_method")},
            "all": hit_rate(rows),
            "buckets": {b: hit_rate(rows[rows["error_bucket"] == b]) for b in BUCKETS},
            "agreement": agreement(rows, min_n),
        })
    return out


def evaluate_reviews(location: str | os.PathLike | None, explanations: "pd.DataFrame",
                     min_n: int = MIN_N) -> dict[str, Any] | None:
    """`review_metrics` of the verdicts in a reviews/ folder; None where there is none (or no verdict)."""
    if location is None:
        return None
    reviews = read_review_files(location)
    return review_metrics(reviews, explanations, min_n) if len(reviews) else None
