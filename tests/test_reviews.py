"""Graders' verdicts on maps (drray.evaluate.reviews): one file per verdict, exactly once, across restarts; their
figures checked by hand; the `review` rows of `drray evaluate`; the Explore tab's review panel and strategy filter."""

from __future__ import annotations

import json
import math
import subprocess
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drray.schema import REVIEWS_SCHEMA, STRATEGY_OF_SCHEMA, VERDICTS
from test_evaluate import write_run

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).parents[1]
Z = 1.959963984540054


@pytest.fixture
def run(tmp_path):
    """A small run of synthetic explanations (two methods, ids synth_test_0000...)."""
    return write_run(tmp_path / "run", n=24, seed=2)


def _files(run: Path) -> list[Path]:
    folder = run / "reviews"
    return sorted(folder.iterdir()) if folder.exists() else []


def _record(run, **kw):
    from drray.evaluate.reviews import record_review

    args = dict(reviewer="anna", image_id="synth_test_0000", cam_method="gradcam", verdict="on")
    return record_review(run, **{**args, **kw})


# ------------------------------------------------------------------------------------------ storage
def test_a_verdict_is_recorded_and_read_back(run):
    from drray.evaluate.reviews import read_reviews

    assert list(read_reviews(run).columns) == REVIEWS_SCHEMA.names and read_reviews(run).empty
    review = _record(run, reviewer="  anna  ", point_y=0.25, point_x=0.75)
    assert review.reviewer == "anna" and uuid.UUID(review.review_id).version == 4
    assert (review.dataset, review.split, review.model_id) == ("synth", "test", "tiny-model")  # from explanations
    assert review.time.tzinfo is not None and abs(datetime.now(timezone.utc) - review.time) < timedelta(minutes=1)
    assert [p.name for p in _files(run)] == [f"{review.review_id}.parquet"]
    assert pq.read_schema(_files(run)[0]).equals(REVIEWS_SCHEMA, check_metadata=False)
    df = read_reviews(run)
    assert len(df) == 1 and list(df.columns) == REVIEWS_SCHEMA.names
    row = df.iloc[0]
    assert (row["review_id"], row["reviewer"], row["verdict"], row["cam_method"]) == \
        (review.review_id, "anna", "on", "gradcam")
    assert row["point_y"] == pytest.approx(0.25) and row["point_x"] == pytest.approx(0.75)
    assert row["time"] == pd.Timestamp(review.time)
    second = _record(run, verdict="cant_tell")  # no point: nulls
    assert pd.isna(read_reviews(run).set_index("review_id").loc[second.review_id, "point_y"])


def test_a_verdict_is_written_exactly_once(run):
    token = str(uuid.uuid4())
    first = _record(run, review_id=token)
    again = _record(run, review_id=token, verdict="off", reviewer="bob")  # the same click sent twice
    assert again == first and again.verdict == "on"
    assert [p.name for p in _files(run)] == [f"{token}.parquet"]
    _record(run)
    _record(run)  # two clicks, two verdicts
    assert len(_files(run)) == 3
    assert not [p for p in (run / "reviews").iterdir() if p.name.startswith(".")]  # no temporary file is left


def test_a_verdict_survives_a_restart(run):
    review = _record(run, verdict="off")
    p = subprocess.run([str(ROOT / ".venv" / "bin" / "drray"), "query",
                        "select review_id, reviewer, verdict, image_id from reviews", "--run", str(run),
                        "--format", "json"], capture_output=True, text=True, cwd=ROOT, timeout=90)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"review_id": review.review_id, "reviewer": "anna", "verdict": "off",
                                     "image_id": "synth_test_0000"}]


@pytest.mark.parametrize("kw, message", [
    (dict(reviewer=""), "name: it is empty"),
    (dict(reviewer="   "), "name: it is empty"),
    (dict(reviewer="a" * 101), "101 characters is too long"),
    (dict(reviewer="anna\nbob"), "control characters"),
    (dict(reviewer="anna\x00"), "control characters"),
    (dict(verdict="maybe"), "unknown verdict 'maybe'; choose one of: on, off, cant_tell"),
    (dict(point_y=1.5, point_x=0.5), r"point_y 1.5 is outside \[0, 1\]"),
    (dict(point_y=0.5, point_x=-0.1), r"point_x -0.1 is outside \[0, 1\]"),
    (dict(point_y=float("nan"), point_x=0.5), "outside"),
    (dict(point_y=0.5), "needs both point_y and point_x"),
    (dict(image_id="no_such_image"), "no explanation of image 'no_such_image' with method 'gradcam'"),
    (dict(cam_method="scorecam"), "no explanation of image 'synth_test_0000' with method 'scorecam'"),
    (dict(review_id="../../etc/passwd"), "is not a uuid"),
])
def test_a_bad_verdict_says_what_is_wrong_and_writes_nothing(run, kw, message):
    with pytest.raises(ValueError, match=message):
        _record(run, **kw)
    assert _files(run) == []


def test_a_run_without_explanations_cannot_be_reviewed(tmp_path):
    with pytest.raises(ValueError, match="no explanations table"):
        _record(tmp_path)
    assert not (tmp_path / "reviews").exists()


# ------------------------------------------------------------------------------------------ figures
def _wilson(k: float, n: int) -> tuple[float, float]:
    """Wilson's score interval written out: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)."""
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


def _reviews(rows: list[tuple]) -> pd.DataFrame:
    """(reviewer, image_id, verdict) rows, one minute apart, on gradcam maps of synth/test/tiny-model."""
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    out = [dict(review_id=str(uuid.UUID(int=i + 1)), reviewer=r, time=t0 + timedelta(minutes=i), image_id=m,
                dataset="synth", split="test", model_id="tiny-model", cam_method="gradcam", verdict=v)
           for i, (r, m, v) in enumerate(rows)]
    return pa.Table.from_pylist(out, schema=REVIEWS_SCHEMA).to_pandas()


def _explanations(grades: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """image_id -> (label, pred) as read_explanations gives them."""
    return pd.DataFrame({"image_id": list(grades), "dataset": "synth", "split": "test", "model_id": "tiny-model",
                         "cam_method": "gradcam", "label": pd.array([g[0] for g in grades.values()], dtype="Int64"),
                         "pred": pd.array([g[1] for g in grades.values()], dtype="Int64")})


def test_review_metrics_match_a_hand_computed_example():
    from drray.evaluate.reviews import review_metrics

    expl = _explanations({"m1": (2, 2), "m2": (2, 2), "m3": (3, 3), "m4": (2, 3), "m5": (4, 0), "m6": (4, 1)})
    reviews = _reviews([
        ("anna", "m1", "on"),
        ("anna", "m2", "on"), ("anna", "m2", "off"),  # anna changed her mind: off counts
        ("anna", "m3", "on"), ("bob", "m3", "on"),
        ("anna", "m4", "off"), ("bob", "m4", "on"),  # the map counts as half a hit
        ("anna", "m5", "cant_tell"),
        ("anna", "m6", "off"),
    ])
    m = review_metrics(reviews, expl, min_n=10)
    assert (m["files"], m["verdicts"], m["reviewers"]) == (9, 8, 2)
    (g,) = m["groups"]
    assert (g["dataset"], g["split"], g["model_id"], g["cam_method"]) == ("synth", "test", "tiny-model", "gradcam")
    # All maps: m1 1, m2 0, m3 1, m4 1/2, m6 0 -> 2.5 of 5; m5 (can't tell) apart.
    a = g["all"]
    assert (a["n"], a["on"], a["off"], a["cant_tell"], a["verdicts"]) == (5, 4, 3, 1, 7)
    assert a["hit_rate"] == pytest.approx(0.5)
    assert (a["hit_rate_ci_low"], a["hit_rate_ci_high"]) == pytest.approx(_wilson(2.5, 5), abs=1e-12)
    assert (a["hit_rate_ci_low"], a["hit_rate_ci_high"]) == pytest.approx((0.170424, 0.829576), abs=1e-6)
    ex, one, gross = (g["buckets"][b] for b in ("exact", "off_by_one", "gross"))
    assert (ex["n"], ex["hit_rate"]) == (3, pytest.approx(2 / 3))  # m1, m2, m3
    assert (ex["hit_rate_ci_low"], ex["hit_rate_ci_high"]) == pytest.approx((0.207660, 0.938508), abs=1e-6)
    assert (one["n"], one["hit_rate"]) == (1, 0.5)  # m4
    assert (gross["n"], gross["hit_rate"], gross["cant_tell"]) == (1, 0.0, 1)  # m6; m5 can't tell
    assert gross["hit_rate_ci_low"] == 0.0 and gross["hit_rate_ci_high"] == pytest.approx(_wilson(0, 1)[1])
    # m3 (on, on) and m4 (off, on): 1 of 2 pairs agree; verdict shares 3/4 on, 1/4 off -> chance 5/8.
    ag = g["agreement"]
    assert (ag["maps"], ag["pairs"], ag["reviewers"], ag["kappa_method"]) == (2, 2, 2, "cohen")
    assert ag["agreement"] == 0.5 and ag["chance_agreement"] == pytest.approx(0.625)
    assert ag["kappa"] is None  # 2 maps, fewer than min_n


def test_cohens_kappa_for_two_reviewers_and_fleiss_for_more():
    from sklearn.metrics import cohen_kappa_score

    from drray.evaluate.reviews import agreement

    # Two reviewers, 10 maps: agree on 8 (5 on, 3 off); each says on 6 times -> chance .6^2 + .4^2 = .52.
    a = ["on"] * 6 + ["off"] * 4
    b = ["on"] * 5 + ["off"] * 4 + ["on"]
    rows = _reviews([("anna", f"m{i}", v) for i, v in enumerate(a)] + [("bob", f"m{i}", v) for i, v in enumerate(b)])
    ag = agreement(rows, min_n=10)
    assert (ag["maps"], ag["pairs"], ag["kappa_method"], ag["agreement"]) == (10, 10, "cohen", pytest.approx(0.8))
    assert ag["kappa"] == pytest.approx((0.8 - 0.52) / (1 - 0.52))  # 0.58333
    assert ag["kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert agreement(rows, min_n=11)["kappa"] is None
    # Three reviewers, 4 maps, (on, off, can't tell) per map: (3,0,0) (2,1,0) (0,3,0) (1,1,1).
    # Agreeing pairs 3 + 1 + 3 + 0 of 12; shares 6/12, 5/12, 1/12 -> chance 0.430556; Fleiss' kappa 0.268293.
    votes = {"m0": ["on", "on", "on"], "m1": ["on", "on", "off"], "m2": ["off", "off", "off"],
             "m3": ["on", "off", "cant_tell"]}
    rows = _reviews([(r, m, v) for m, vs in votes.items() for r, v in zip(("anna", "bob", "chen"), vs)])
    ag = agreement(rows, min_n=4)
    assert (ag["maps"], ag["pairs"], ag["reviewers"], ag["kappa_method"]) == (4, 12, 3, "fleiss")
    assert ag["agreement"] == pytest.approx(7 / 12)
    assert ag["chance_agreement"] == pytest.approx((36 + 25 + 1) / 144)
    assert ag["kappa"] == pytest.approx((7 / 12 - 62 / 144) / (1 - 62 / 144)) and ag["kappa"] == pytest.approx(
        0.268293, abs=1e-6)
    assert agreement(_reviews([("anna", "m0", "on"), ("anna", "m1", "off")])) is None  # nobody reviewed twice


def test_evaluate_adds_the_review_rows(run):
    import drray
    from drray.evaluate.evaluate import evaluate_run

    assert evaluate_run(run, n_boot=20)["reviews"] is None  # no verdict yet
    assert drray.query("select count(*) as n from metrics where family = 'review'", run=run)["n"][0] == 0
    ids = [f"synth_test_{i:04d}" for i in range(4)]
    for i, image_id in enumerate(ids):
        _record(run, image_id=image_id, verdict="on" if i < 3 else "off")
    _record(run, image_id=ids[0], reviewer="bob", verdict="off")
    _record(run, image_id=ids[1], cam_method="gradcam++", verdict="cant_tell")
    m = evaluate_run(run, n_boot=20)
    stored = json.loads((run / "metrics.json").read_text())
    assert stored["reviews"] == m["reviews"] and m["reviews"]["files"] == 6
    rows = drray.query("select cam_method, metric, error_bucket, value, ci_low, ci_high, ci_method, n, baseline "
                       "from metrics where family = 'review' order by all", run=run)
    hit = rows[(rows["metric"] == "reviewed_hit_rate") & rows["error_bucket"].isna()].set_index("cam_method")
    assert hit.loc["gradcam", "n"] == 4 and hit.loc["gradcam", "value"] == pytest.approx(2.5 / 4)
    assert hit.loc["gradcam", "ci_method"] == "wilson"
    assert (hit.loc["gradcam", "ci_low"], hit.loc["gradcam", "ci_high"]) == pytest.approx(_wilson(2.5, 4))
    assert hit.loc["gradcam++", "n"] == 0 and pd.isna(hit.loc["gradcam++", "value"])
    cant = rows[(rows["metric"] == "reviewed_cant_tell") & rows["error_bucket"].isna()].set_index("cam_method")
    assert cant.loc["gradcam++", "value"] == 1
    buckets = rows[(rows["metric"] == "reviewed_hit_rate") & (rows["cam_method"] == "gradcam")
                   & rows["error_bucket"].notna()]
    assert sorted(buckets["error_bucket"]) == ["exact", "gross", "off_by_one"] and buckets["n"].sum() == 4
    agree = rows[rows["metric"] == "reviewer_agreement"]
    assert len(agree) == 1 and agree["value"].iloc[0] == 0.0 and agree["n"].iloc[0] == 1  # anna on, bob off
    assert agree["baseline"].iloc[0] == pytest.approx(0.5)
    assert (rows["metric"] == "reviewer_kappa").sum() == 1


# ------------------------------------------------------------------------- the Explore tab, without a page
def test_the_review_panel_records_and_counts(run):
    from drray.evaluate.reviews import read_reviews
    from drray.serve.explore import ExploreFilter, click_point, find_explanations, review_key, submit_review
    from drray.serve.explore import verdicts_text

    rows, _ = find_explanations(run, ExploreFilter(method="gradcam", dataset="synth"), limit=1)
    key = review_key(rows[0])
    assert set(key) == {"image_id", "dataset", "split", "model_id", "cam_method"}
    assert verdicts_text(run, key) == "No verdict on this map yet."
    point = click_point([10, 30], (40, 80))  # x 10 of 40, y 30 of 80: pixel centres
    assert point == (30.5 / 80, 10.5 / 40)
    token = str(uuid.uuid4())
    text = submit_review(run, key, "anna", "on", point, token)
    assert text == f"recorded: on, by anna, for {key['image_id']} gradcam at y 0.38, x 0.26"
    assert submit_review(run, key, "anna", "on", point, token) == text and len(_files(run)) == 1
    submit_review(run, key, "bob", "cant_tell")
    assert verdicts_text(run, key) == "Verdicts on this map: on the lesions 1, off the lesions 0, can't tell 1 " \
                                      "(2 reviewers)."
    with pytest.raises(ValueError, match="select a row first"):
        submit_review(run, None, "anna", "on")
    with pytest.raises(ValueError, match="name: it is empty"):
        submit_review(run, key, " ", "on")
    with pytest.raises(ValueError, match="click on the overlay"):
        click_point(None, (40, 80))
    assert len(read_reviews(run)) == 2


S0, S1, CAMERA = "gradcam/fundus/grade2/s1", "gradcam/fundus/grade2/s2", "gradcam/camera/grade2/s1"


def _audit(run: Path) -> None:
    """strategy_of.parquet and strategies.parquet as `drray audit` writes them: gradcam rows in two strategies."""
    expl = pq.read_table(run / "explanations").to_pandas()
    of = expl[["image_id", "dataset", "split", "model_id", "cam_method"]].astype(object)
    of = of[of["cam_method"] == "gradcam"].reset_index(drop=True)
    of["strategy"] = [S1 if i % 3 == 0 else S0 for i in range(len(of))]
    of["referable_strategy"] = None
    of["camera_strategy"] = [CAMERA if i % 4 == 0 else None for i in range(len(of))]
    of["camera_referable_strategy"] = None
    pq.write_table(pa.Table.from_pandas(of, schema=STRATEGY_OF_SCHEMA, preserve_index=False),
                   run / "strategy_of.parquet")
    strategies = pd.DataFrame({"strategy": [S0, S1, CAMERA], "cam_method": ["gradcam"] * 3,
                               "verdict": ["ok", "suspect", "ok"],
                               "images": [int((of["strategy"] == s).sum()) for s in (S0, S1)]
                               + [int((of["camera_strategy"] == CAMERA).sum())]})
    pq.write_table(pa.Table.from_pandas(strategies, preserve_index=False), run / "strategies.parquet")


def test_the_strategy_filter_selects_that_strategys_rows(run):
    import drray
    from drray.serve.explore import ExploreFilter, explore_summary, find_explanations

    assert explore_summary(run)["strategies"] == []
    with pytest.raises(ValueError, match="no strategies to filter by; run `drray audit`"):
        find_explanations(run, ExploreFilter(strategy=S1))
    _audit(run)
    assert explore_summary(run)["strategies"] == [(CAMERA, CAMERA), (S0, S0), (f"{S1} (suspect)", S1)]
    expected = set(drray.query(f"select image_id from strategy_of where strategy = '{S1}'", run=run)["image_id"])
    rows, total = find_explanations(run, ExploreFilter(strategy=S1), limit=500)
    assert total == len(expected) == 8 and {r["image_id"] for r in rows} == expected
    assert {r["cam_method"] for r in rows} == {"gradcam"}
    camera = set(drray.query(f"select image_id from strategy_of where camera_strategy = '{CAMERA}'",
                             run=run)["image_id"])
    rows, total = find_explanations(run, ExploreFilter(strategy=CAMERA), limit=500)
    assert total == len(camera) > 0 and {r["image_id"] for r in rows} == camera
    _, everything = find_explanations(run, ExploreFilter(strategy="any"), limit=500)
    assert everything == 48
    where, params = ExploreFilter(strategy="x").where()
    assert "? in (strategy, referable_strategy, camera_strategy, camera_referable_strategy)" in where
    assert params == ["x"]


@pytest.mark.parametrize("verdict", VERDICTS)
def test_every_verdict_has_a_button(verdict):
    from drray.serve.explore import REVIEW_BUTTONS

    assert verdict in REVIEW_BUTTONS
