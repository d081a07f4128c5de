"""Evaluation: a model dir graded on a split (Predictor over Ray Data), and a run's tables -> metrics.json/.parquet,
every figure recomputed with DuckDB and scikit-learn from the same tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drray.config import PreprocessConfig, SynthConfig
from drray.models.model import create_model, save_model

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from drray.data.ingest import ingest
    from drray.data.synth import generate

    root = tmp_path_factory.mktemp("evaluate")
    generate(SynthConfig(n=24, size=96, seed=5), root / "synth", parallel=False)
    ingest("synth", root / "synth", root, split_fractions=(0.5, 0.0, 0.5))
    torch.manual_seed(0)
    save_model(create_model("test_resnet", image_size=48, preprocess=PreprocessConfig(image_size=48)), root / "model")
    return root


def test_grade_split_grades_the_split_with_the_predictor(ray_session, run):
    from drray.data.ingest import read_manifest
    from drray.explain.grade import grade_split

    m = grade_split(run / "model", run / "manifest.parquet", split="test", n_boot=50)
    manifest = read_manifest(run / "manifest.parquet")
    assert m["n"] == int((manifest["split"] == "test").sum()) and m["skipped_unreadable"] == 0
    assert sum(m["label_counts"]) == sum(m["pred_counts"]) == m["n"]


def test_grade_split_uses_the_pixel_limit_it_is_given(ray_session, run):
    """Images admitted under a raised data.max_image_pixels are graded, not counted as unreadable."""
    from drray.explain.grade import grade_split

    # Below every image's size, every image is refused; at their size, every one is graded.
    with pytest.raises(ValueError, match="no readable labelled image"):
        grade_split(run / "model", run / "manifest.parquet", split="test", max_pixels=96 * 96 - 1, n_boot=10)
    m = grade_split(run / "model", run / "manifest.parquet", split="test", max_pixels=96 * 96, n_boot=10)
    assert m["n"] > 0 and m["skipped_unreadable"] == 0


# ------------------------------------------------------------------ a run built from synthetic rows
# Other test files (test_observations, test_report, test_readme_queries) import these builders.
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from drray.schema import (  # noqa: E402
    ERRORS_SCHEMA, EXPLAIN_ERRORS_SCHEMA, EXPLANATIONS_SCHEMA, LESION_TYPES, RANDOMISATION_SCHEMA, TRIALS_SCHEMA,
)

HIT_P = {0: 0.85, 1: 0.75, 2: 0.1}
"""P(peak on a lesion) by |pred - label| (capped at 2) in the synthetic rows: (a) and (b) hold by design."""


def _map(rng, grade: int, size: int = 8) -> np.ndarray:
    """Grade 0: a nearly flat map (diffuse); lesion grades: one blob (concentrated)."""
    if grade == 0:
        m = 0.6 + 0.05 * rng.random((size, size))
    else:
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.uniform(1, size - 2, 2)
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2 ** 2)) + 0.02 * rng.random((size, size))
    return np.clip(m / m.max(), 0, 1).astype(np.float16)


def synthetic_explanations(n: int = 150, methods=("gradcam", "gradcam++"), seed: int = 0, *,
                           dataset: str = "synth", split: str = "test", model_id: str = "tiny-model",
                           image_ids=None, labels=None, predict_only: bool = False, unlabelled: int = 3) -> pa.Table:
    """Rows in EXPLANATIONS_SCHEMA, one per image and method, as `drray explain` writes them."""
    from drray.cam.overlay import colorize, encode_png
    from drray.scores.localisation import entropy

    rng = np.random.default_rng(seed)
    ids = list(image_ids) if image_ids is not None else [f"{dataset}_{split}_{i:04d}" for i in range(n)]
    n = len(ids)
    if labels is None:
        labels = rng.choice(5, size=n, p=[0.35, 0.15, 0.2, 0.15, 0.15]).tolist()
        for i in range(min(unlabelled, n)):
            labels[n - 1 - i] = None
    rows = []
    for i, (iid, y) in enumerate(zip(ids, labels)):
        off = int(rng.choice(3, p=[0.55, 0.3, 0.15]))
        base = 2 if y is None else int(y)
        pred = base + off if base + off <= 4 else base - off
        if y is not None and off == 2 and rng.random() < 0.3:
            pred = 0 if base >= 2 else 4  # some grossest errors: 4 called 0
        probs = rng.dirichlet(np.full(5, 0.7)) * 0.4
        probs[pred] += 0.6
        probs = (probs / probs.sum()).astype(np.float32)
        shared = dict(image_id=iid, dataset=dataset, split=split, label=y, model_id=model_id, pred=pred,
                      probs=probs.tolist(), referable_prob=float(probs[2:].sum()), quality_ok=(i != 1),
                      target_class=None)
        lesion = y is not None and y >= 1 or (y is None and i % 2 == 0)
        present = [t for t in LESION_TYPES if rng.random() < 0.6] or ["ma"]
        if predict_only:
            rows.append({**shared, "cam_method": None})
        for mi, method in enumerate(methods):
            r = np.random.default_rng([seed, i, mi])
            cam = _map(r, 0 if not lesion else 2)
            row = {**shared, "cam_method": method, "cam": cam.tobytes(), "cam_h": 8, "cam_w": 8,
                   "peak_y": float(r.random()), "peak_x": float(r.random()),
                   "cam_entropy": entropy(cam.astype(np.float32)), "od_energy": float(r.uniform(0, 0.1)),
                   "cam_layer": "backbone.layer2", "overlay_png": encode_png(colorize(cam.astype(np.float32)))}
            if lesion:
                err = min(2, abs(pred - base))
                hit = bool(r.random() < HIT_P[err])
                area = float(r.uniform(0.01, 0.05))
                energy = area * (3.0 if hit else 1.2) * float(r.uniform(0.8, 1.2))
                row.update(pointing_hit=hit, chance_hit=float(r.uniform(0.05, 0.2)), lesion_area=area,
                           energy_in_lesions=energy, ideal_energy=min(1.0, area * float(r.uniform(5, 15))),
                           **{f"energy_{t}": energy / len(present) for t in present})
            rows.append(row)
    cols = {f.name: [r.get(f.name) for r in rows] for f in EXPLANATIONS_SCHEMA}
    return pa.Table.from_pydict(cols, schema=EXPLANATIONS_SCHEMA)


def write_explanations(run: Path, table: pa.Table, part: str = "part-0") -> None:
    """Hive-partitioned by dataset and split, as the sink writes them (the partition columns not in the files)."""
    for d in sorted(set(table["dataset"].to_pylist())):
        for s in sorted(set(table["split"].to_pylist())):
            sub = table.filter(pa.compute.and_(pa.compute.equal(table["dataset"], d), pa.compute.equal(table["split"], s)))
            if sub.num_rows:
                folder = run / "explanations" / f"dataset={d}" / f"split={s}"
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(sub.drop_columns(["dataset", "split"]), folder / f"{part}.parquet")


def synthetic_randomisation(expl: pa.Table, method: str = "gradcam", n: int = 30, steps: int = 3) -> pa.Table:
    """The randomisation check on the first n lesion images: cascade 0 = the trained rows, then chance-level peaks."""
    rows = [r for r in expl.to_pylist() if r["cam_method"] == method and r["pointing_hit"] is not None][:n]
    out = []
    for r in rows:
        rng = np.random.default_rng(abs(hash(r["image_id"])) % 2**32)
        for c in range(steps + 1):
            empty = c > 0 and bool(rng.random() < 0.3)  # random weights often leave a map with no peak
            hit = r["pointing_hit"] if c == 0 else (not empty and bool(rng.random() < r["chance_hit"]))
            out.append(dict(image_id=r["image_id"], dataset=r["dataset"], split=r["split"], label=r["label"],
                            model_id=r["model_id"], cam_method=method, cascade=c, draw=0,
                            reinitialised=",".join(["head", "layer4", "layer3"][:c]),
                            rank_corr=1.0 if c == 0 else float(rng.uniform(-0.1, 0.4) / c),
                            pointing_hit=hit, chance_hit=r["chance_hit"], empty_map=empty,
                            expected_hit=r["chance_hit"] if empty else float(hit),
                            energy_in_lesions=None if empty else (r["energy_in_lesions"] if c == 0
                                                                  else r["lesion_area"])))
    return pa.Table.from_pylist(out, schema=RANDOMISATION_SCHEMA)


def write_side_tables(run: Path, expl: pa.Table) -> None:
    """randomisation.parquet, trials.parquet and both error tables beside the explanations."""
    pq.write_table(synthetic_randomisation(expl), run / "randomisation.parquet")
    trials = [dict(trial_id="t0", backbone="test_resnet", head="ordinal", lr=3e-3, image_size=48, batch_size=8,
                   best_val_qwk=0.61, epochs_run=4, status="TERMINATED", best_epoch=3, score_method="val qwk"),
              dict(trial_id="t1", backbone="test_efficientnet", head="ordinal", lr=3e-3, image_size=48, batch_size=8,
                   best_val_qwk=0.42, epochs_run=2, status="TERMINATED", best_epoch=2, score_method="val qwk")]
    pq.write_table(pa.Table.from_pylist(trials, schema=TRIALS_SCHEMA), run / "trials.parquet")
    ingest = [dict(source="images/bad.jpg", stage="ingest", reason="corrupt_image", detail="cannot identify image"),
              dict(source="labels.csv:7", stage="ingest", reason="label_out_of_range", detail="label 7")]
    pq.write_table(pa.Table.from_pylist(ingest, schema=ERRORS_SCHEMA), run / "ingest_errors.parquet")
    (run / "explain_errors").mkdir(exist_ok=True)
    explain = [dict(source="images/x.jpg", stage="read", reason="missing_file", detail="gone", image_id="x",
                    dataset="synth", split="test", model_id="tiny-model", cam_method=None)]
    pq.write_table(pa.Table.from_pylist(explain, schema=EXPLAIN_ERRORS_SCHEMA), run / "explain_errors" / "part-0.parquet")


def write_run(run: Path, n: int = 150, seed: int = 0, **kw) -> Path:
    """A run directory of synthetic tables: explanations (two methods), randomisation, trials, errors."""
    run.mkdir(parents=True, exist_ok=True)
    expl = synthetic_explanations(n, seed=seed, **kw)
    write_explanations(run, expl)
    write_side_tables(run, expl)
    return run


# ------------------------------------------------------------ evaluate_run: every figure recomputed
def _wilson(k: int, n: int) -> tuple[float, float]:
    from scipy.stats import norm

    z = norm.ppf(0.975)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    from drray.evaluate.evaluate import evaluate_run

    run = write_run(tmp_path_factory.mktemp("evaluate_run") / "run", n=160, seed=3)
    return run, evaluate_run(run, n_boot=200)


def _con(run):
    from drray.evaluate.query import connect

    return connect(run)


def test_grading_figures_agree_with_duckdb_and_sklearn(synthetic_run):
    from sklearn import metrics as skm

    run, m = synthetic_run
    stored = json.loads((run / "metrics.json").read_text())
    assert stored["qwk"] == m["qwk"] and stored["observations"] == m["observations"]
    g = stored["groups"][0]["grading"]
    con = _con(run)
    # One row per image: its first method's row by name (the table has no predict-only rows here).
    df = con.execute("""select distinct on (image_id) image_id, label, pred, referable_prob, probs
                        from explanations where label is not null order by image_id, cam_method nulls first""").df()
    y, p = df["label"].to_numpy(int), df["pred"].to_numpy(int)
    assert g["n"] == stored["n"] == len(df) == con.execute(
        "select count(distinct image_id) from explanations where label is not null").fetchone()[0]
    assert g["n_unlabelled"] == 3
    assert g["qwk"] == pytest.approx(skm.cohen_kappa_score(y, p, weights="quadratic", labels=range(5)), abs=1e-12)
    assert g["qwk_ci_low"] < g["qwk"] < g["qwk_ci_high"]
    assert g["accuracy"] == pytest.approx(skm.accuracy_score(y, p), abs=1e-15)
    assert (g["accuracy_ci_low"], g["accuracy_ci_high"]) == pytest.approx(_wilson(int((y == p).sum()), len(y)), abs=1e-12)
    assert g["macro_f1"] == pytest.approx(skm.f1_score(y, p, average="macro"), abs=1e-12)
    assert g["confusion_matrix"] == skm.confusion_matrix(y, p, labels=range(5)).tolist()
    ref = df["referable_prob"].to_numpy(float)
    assert g["referable_auc"] == pytest.approx(skm.roc_auc_score(y >= 2, ref), abs=1e-12)
    assert g["referable_auc_ci_low"] < g["referable_auc"] < g["referable_auc_ci_high"]
    sens, n_pos, spec, n_neg = con.execute("""
        select avg((referable_prob >= 0.5)::int) filter (where label >= 2), count(*) filter (where label >= 2),
               avg((referable_prob < 0.5)::int) filter (where label < 2), count(*) filter (where label < 2)
        from (select distinct on (image_id) * from explanations where label is not null
              order by image_id, cam_method nulls first)""").fetchone()
    assert (g["sensitivity"], g["n_referable"], g["specificity"], g["n_non_referable"]) == pytest.approx(
        (sens, n_pos, spec, n_neg), abs=1e-12)
    assert (g["sensitivity_ci_low"], g["sensitivity_ci_high"]) == pytest.approx(
        _wilson(round(sens * n_pos), n_pos), abs=1e-12)
    probs = np.stack(df["probs"].to_numpy()).astype(np.float64)
    conf, correct = probs.max(1), (probs.argmax(1) == y)
    bins = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(15)) / len(y)
    assert g["ece"] == pytest.approx(ece, abs=1e-12)


def test_grading_prefers_predict_only_rows_and_counts_each_image_once(tmp_path):
    from drray.evaluate.evaluate import evaluate_run

    run = tmp_path / "run"
    write_explanations(run, synthetic_explanations(40, seed=1, predict_only=True))
    m = evaluate_run(run, n_boot=20)
    assert m["groups"][0]["grading_rows"] == "predict-only" and m["n"] == 37
    assert set(m["groups"][0]["methods"]) == {"gradcam", "gradcam++"}  # the null-method rows make no method


def test_explanation_figures_agree_with_duckdb(synthetic_run):
    run, m = synthetic_run
    con = _con(run)
    for method, e in m["groups"][0]["methods"].items():
        loc = e["localisation"]
        by_grade = con.execute("""
            select label, count(*), sum(pointing_hit::int), avg(pointing_hit::int), avg(chance_hit),
                   avg(energy_in_lesions), avg(lesion_area), avg(energy_in_lesions) / avg(lesion_area),
                   median(energy_in_lesions / lesion_area), avg(ideal_energy) / avg(lesion_area),
                   median(ideal_energy / lesion_area)
            from explanations where cam_method = ? and pointing_hit is not null and label is not null
            group by label order by label""", [method]).fetchall()
        assert [r[0] for r in by_grade] == [1, 2, 3, 4] and loc["by_grade"]["0"]["n"] == 0
        for grade, n, hits, rate, chance, energy, area, lift, lift_median, ideal, ideal_median in by_grade:
            s = loc["by_grade"][str(grade)]
            assert (s["n"], s["hits"]) == (n, hits)
            assert (s["hit_rate"], s["chance_hit"], s["energy_in_lesions"], s["lesion_area"], s["energy_lift"],
                    s["energy_lift_median"]) == pytest.approx((rate, chance, energy, area, lift, lift_median),
                                                              rel=1e-6)
            assert (s["ideal_lift"], s["ideal_lift_median"]) == pytest.approx((ideal, ideal_median), rel=1e-6)
            assert s["energy_lift_median"] != pytest.approx(s["energy_lift"], rel=1e-3)  # two different figures
            assert (s["hit_rate_ci_low"], s["hit_rate_ci_high"]) == pytest.approx(_wilson(hits, n), abs=1e-12)
        n, rate, sd = con.execute("""select count(*), avg(energy_in_lesions), stddev_samp(energy_in_lesions)
                                     from explanations where cam_method = ? and pointing_hit is not null""",
                                  [method]).fetchone()
        s = loc["all"]
        assert s["energy_in_lesions"] == pytest.approx(rate, rel=1e-12)
        assert s["energy_in_lesions_ci_high"] == pytest.approx(rate + 1.959963984540054 * sd / np.sqrt(n), rel=1e-9)
        for t in LESION_TYPES:
            n, energy, rate = con.execute(f"""select count(*), avg(energy_{t}), avg(pointing_hit::int) from explanations
                                              where cam_method = ? and energy_{t} is not null""", [method]).fetchone()
            s = loc["by_lesion"][t]
            assert s["images"] == n and s["energy"] == pytest.approx(energy, rel=1e-12)
            assert s["hit_rate"] == pytest.approx(rate, rel=1e-12)
        od, = con.execute("select avg(od_energy) from explanations where cam_method = ?", [method]).fetchone()
        assert e["optic_disc"]["od_energy"] == pytest.approx(od, rel=1e-12)
        # Error buckets, and entropy per grade.
        buckets = con.execute("""
            select case abs(pred - label) when 0 then 'exact' when 1 then 'off_by_one' else 'gross' end as b,
                   count(*), count(pointing_hit), avg(pointing_hit::int), avg(chance_hit)
                   filter (where pointing_hit is not null)
            from explanations where cam_method = ? and label is not null group by b""", [method]).fetchall()
        for b, images, n, rate, chance in buckets:
            s = e["observations"]["buckets"][b]
            assert (s["images"], s["n"]) == (images, n)
            assert (s["hit_rate"], s["chance_hit"]) == pytest.approx((rate, chance), rel=1e-12)
        for grade, ent in con.execute("""select label, avg(cam_entropy) from explanations
                                         where cam_method = ? and label is not null group by label""", [method]).fetchall():
            assert e["concentration"]["by_grade"][str(grade)]["cam_entropy"] == pytest.approx(ent, rel=1e-12)


def test_peak_share_is_max_over_sum_of_the_stored_map(synthetic_run):
    from drray.scores.map_scores import decode_map

    run, m = synthetic_run
    df = _con(run).execute("select label, cam, cam_h, cam_w from explanations "
                           "where cam_method = 'gradcam' and label = 2").df()
    shares = [float(mp.max() / mp.sum()) for mp in (decode_map(c, h, w) for c, h, w in
                                                    zip(df["cam"], df["cam_h"], df["cam_w"]))]
    got = m["groups"][0]["methods"]["gradcam"]["concentration"]["by_grade"]["2"]["peak_share"]
    assert got == pytest.approx(np.mean(shares), rel=1e-6)


def test_randomisation_figures_come_from_randomisation_parquet(synthetic_run):
    run, m = synthetic_run
    r = m["groups"][0]["methods"]["gradcam"]["randomisation"]
    assert m["groups"][0]["methods"]["gradcam++"]["randomisation"] is None  # the check ran on gradcam only
    rows = _con(run).execute("""select cascade, avg(pointing_hit::int), avg(rank_corr), count(*),
                                       avg(expected_hit), count(*) filter (where empty_map) from randomisation
                                group by cascade order by cascade""").fetchall()
    assert [s["cascade"] for s in r["cascades"]] == [c for c, *_ in rows]
    for s, (c, rate, corr, n, expected, empty) in zip(r["cascades"], rows):
        assert (s["hit_rate"], s["rank_corr"], s["n"]) == pytest.approx((rate, corr, n), rel=1e-12)
        assert (s["expected_hit_rate"], s["empty_maps"]) == pytest.approx((expected, empty), rel=1e-6)
    # Empty maps count as misses in hit_rate and at their image's chance in expected_hit_rate.
    deepest = r["random_weights"]
    assert deepest["empty_maps"] > 0 and deepest["expected_hit_rate"] > deepest["hit_rate"]
    assert r["random_weights"]["cascade"] == 3 and r["trained"]["rank_corr"] == 1.0


def test_metrics_parquet_holds_the_json_figures_and_is_the_metrics_view(synthetic_run):
    import drray
    from drray.schema import METRICS_SCHEMA

    run, m = synthetic_run
    assert pq.read_schema(run / "metrics.parquet").remove_metadata().equals(METRICS_SCHEMA)
    got = drray.query("select value, ci_low, ci_high, n from metrics where family = 'grading' and metric = 'qwk'", run=run)
    assert got.iloc[0].tolist() == pytest.approx([m["qwk"], m["qwk_ci_low"], m["qwk_ci_high"], m["n"]])
    # The off-by-one hit rate in metrics.parquet, against the explanations table in one SQL statement.
    diff = drray.query("""
        select m.cam_method, m.value - e.rate as d, m.baseline - e.chance as dc, m.n - e.n as dn
        from metrics m join (select cam_method, avg(pointing_hit::int) rate, avg(chance_hit) chance, count(*) n
                             from explanations where abs(pred - label) = 1 and pointing_hit is not null group by 1) e
        using (cam_method)
        where m.family = 'error_bucket' and m.metric = 'pointing_hit_rate' and m.error_bucket = 'off_by_one'""", run=run)
    assert len(diff) == 2 and (diff[["d", "dc", "dn"]].abs().to_numpy() < 1e-12).all()
    # The ideal map's lift over all lesion images, beside the maps' own.
    ideal = drray.query("""
        select m.cam_method, m.value - e.ideal as d
        from metrics m join (select cam_method, avg(ideal_energy) / avg(lesion_area) ideal
                             from explanations where pointing_hit is not null group by 1) e using (cam_method)
        where m.family = 'localisation' and m.metric = 'ideal_lift' and m.grade is null""", run=run)
    assert len(ideal) == 2 and (ideal["d"].abs() < 1e-9).all()
    cells = drray.query("select grade, pred_grade, value from metrics where metric = 'confusion'", run=run)
    cm = np.zeros((5, 5))
    cm[cells["grade"].astype(int), cells["pred_grade"].astype(int)] = cells["value"]
    assert cm.tolist() == m["groups"][0]["grading"]["confusion_matrix"]
    obs = drray.query("select cam_method, metric, status from metrics where family = 'observation' order by 1, 2", run=run)
    assert obs["status"].tolist() == ["holds"] * 6  # the synthetic rows are made for (a), (b) and (c) to hold
    assert all(s.split(": (")[1][0] in "abc" for s in m["observations"]) and len(m["observations"]) == 6


def test_evaluate_writes_only_under_out_and_takes_an_explanations_folder(synthetic_run, tmp_path):
    from drray.evaluate.evaluate import evaluate

    run, m = synthetic_run
    again = evaluate(run / "explanations", tmp_path / "out", randomisation=run / "randomisation.parquet", n_boot=200)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "metrics.parquet"]
    assert again["groups"] == m["groups"]  # seeded bootstrap: the same tables give the same file
    with pytest.raises(FileNotFoundError, match="drray explain"):
        evaluate(tmp_path / "nothing", tmp_path / "out2")


# ----------------------------------------------------------------- end to end on a real tiny run
@pytest.mark.timeout(240)
def test_evaluate_run_on_a_real_explained_run_matches_grade_split(ray_session, run):
    """explain (Ray) -> evaluate_run -> report on a tiny ingested run: the same predictor, the same QWK."""
    from drray.config import CamConfig, ExplainConfig
    from drray.evaluate.evaluate import evaluate_run
    from drray.explain.grade import grade_split
    from drray.evaluate.report import report
    from drray.explain.pipeline import explain

    explain(run / "manifest.parquet", run / "model", run, methods=["gradcam"], split="test",
            cam=CamConfig(cam_size=8, overlay_size=32), job=ExplainConfig(batch_size=8))
    m = evaluate_run(run, n_boot=50)
    direct = grade_split(run / "model", run / "manifest.parquet", split="test", n_boot=50)
    assert m["n"] == direct["n"] and m["groups"][0]["grading"]["confusion_matrix"] == direct["confusion_matrix"]
    assert m["qwk"] == pytest.approx(direct["qwk"], abs=1e-12)
    assert m["cam_method"] == "gradcam" and len(m["observations"]) == 3
    html = Path(report(run)).read_text()
    assert html.count('<div class="card') >= 1 and "Tune trials" not in html  # this run has no trials.parquet


@pytest.mark.timeout(120)
def test_evaluate_run_and_report_on_object_storage(synthetic_run, bucket):
    """The same run on s3:// (moto on loopback) gives the same metrics, written back into the bucket."""
    from pyarrow import fs as pafs

    from drray import storage
    from drray.evaluate.evaluate import evaluate_run
    from drray.evaluate.report import report

    run, local = synthetic_run
    remote = f"{bucket}/runs/demo"
    s3, path = pafs.FileSystem.from_uri(remote)
    for name in ("explanations", "randomisation.parquet", "trials.parquet"):
        src = run / name
        if src.is_dir():
            pafs.copy_files(str(src), f"{path}/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=s3)
        else:
            s3.create_dir(path)
            pafs.copy_files(str(src), f"{path}/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=s3)
    m = evaluate_run(remote, n_boot=200)
    assert m["groups"] == local["groups"] and m["observations"] == local["observations"]
    assert storage.read_json(f"{remote}/metrics.json")["qwk"] == local["qwk"]
    assert storage.is_file(f"{remote}/metrics.parquet")
    html = storage.read_text(report(remote, metrics=m))
    assert "Tune trials" in html and "Model randomisation" in html


@pytest.mark.timeout(60)
def test_a_perfect_hit_rate_sits_inside_its_interval_and_plots():
    """Every map of a bucket on a lesion (as the demo's correctly graded images can be): 1.0 <= its upper bound."""
    from drray.scores.intervals import wilson_interval
    from drray.evaluate.plots import buckets_png

    for n in range(1, 1001):  # at n = 80 the formula alone gives 0.9999999999999999
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
    lo, hi = wilson_interval(80, 80)
    bucket = {"n": 80, "hit_rate": 1.0, "hit_rate_ci_low": lo, "hit_rate_ci_high": hi, "chance_hit": 0.08}
    png = buckets_png({"exact": bucket, "off_by_one": {**bucket, "hit_rate": 0.0, "hit_rate_ci_low": 0.0,
                                                       "hit_rate_ci_high": wilson_interval(0, 58)[1]}},
                      {"exact": "exact"}, min_n=10)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
