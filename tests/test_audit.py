"""drray audit: map descriptors, strategies and their verdicts, the intervention, artefacts (drray.audit, drray.scores.descriptors)."""

from __future__ import annotations

import numpy as np
import pytest

from drray.audit.intervention import confirm, region_mask, remove_region
from drray.audit.strategies import Tally, control_place, fit_group, judge, place_of, tally_rows
from drray.config import AuditConfig
from drray.data.geometry import Geometry
from drray.data.synth.artefacts import KINDS, stamp
from drray.scores.descriptors import GRID, decode_grid, flags_of, map_descriptors

S = 64


def _geometry(r: float = 30.0) -> Geometry:
    return Geometry(box_y0=0, box_x0=0, box_side=S, orig_h=S, orig_w=S, quality_ok=True, fov_cy=S / 2, fov_cx=S / 2,
                    fov_r=r, fov_top=0, fov_bottom=S, fov_left=0, fov_right=S)


def _blob(y: float, x: float, sigma: float = 3.0) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S] + 0.5
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2)).astype(np.float32)


# ------------------------------------------------------------------------------ descriptors
def test_descriptors_place_the_mass_in_fundus_coordinates_and_mirror_left_eyes():
    cam = _blob(S / 2, S / 2 + 15)  # half a radius to the right of the centre
    right = map_descriptors(cam, _geometry(), "right")
    left = map_descriptors(cam, _geometry(), "left")
    assert right["mass_x"] == pytest.approx(0.5, abs=0.02) and right["mass_y"] == pytest.approx(0.0, abs=0.02)
    assert left["mass_x"] == pytest.approx(-0.5, abs=0.02)
    g_right, g_left = decode_grid(right["map_grid"]), decode_grid(left["map_grid"])
    assert g_right.sum() == pytest.approx(1.0, abs=1e-2)
    np.testing.assert_allclose(g_left, g_right[:, ::-1], atol=1e-3)
    assert right["mass_spread"] == pytest.approx(3.0 * np.sqrt(2) / 30.0, rel=0.15)
    assert right["flags"] == []


def test_descriptors_measure_the_rim_and_outside_the_field_on_the_unclipped_map():
    outside = map_descriptors(_blob(3, 3, 2.0), _geometry(), None)  # a corner: no retina there
    assert outside["outside_energy"] > 0.9 and "outside_field" in outside["flags"]
    rim = map_descriptors(_blob(S / 2, S / 2 + 28, 1.0), _geometry(), None)
    assert rim["rim_energy"] > 0.5 and "rim" in rim["flags"]
    centre = map_descriptors(_blob(S / 2, S / 2, 2.0), _geometry(), None)
    assert centre["rim_energy"] < 0.01 and centre["outside_energy"] < 0.01


def test_an_empty_map_is_flagged_and_has_no_centre():
    d = map_descriptors(np.zeros((S, S), np.float32), _geometry(), "right")
    assert d["flags"] == ["empty_map"] and d["mass_y"] is None
    assert decode_grid(d["map_grid"]).sum() == 0


def test_flags_follow_their_rules():
    assert flags_of(0.5, 0.1, 0.7) == ["outside_field", "disc"]
    assert flags_of(None, None, None) == []
    assert flags_of(0.49, 0.49, 0.49) == []


# ------------------------------------------------------------------------------ strategies
def test_place_of_takes_the_fewest_cells_holding_the_mass():
    c = np.zeros(GRID * GRID)
    c[[3, 7, 9]] = [0.5, 0.3, 0.2]
    assert np.flatnonzero(place_of(c, 0.5)).tolist() == [3]
    assert np.flatnonzero(place_of(c, 0.6)).tolist() == [3, 7]
    assert not place_of(np.zeros(GRID * GRID), 0.5).any()


def _grids(rng, n, at=None):
    """n grids: mass at random places (lesions in different eyes), or at cell `at` (a shared artefact)."""
    g = np.zeros((n, GRID * GRID), np.float32)
    for i in range(n):
        cells = rng.choice(GRID * GRID, 3, replace=False) if at is None else [at]
        g[i, cells] = 1.0
        g[i] += 0.002 * rng.random(GRID * GRID)
        g[i] /= g[i].sum()
    return g


def test_a_shared_place_is_suspect_and_maps_at_many_places_are_not():
    rng = np.random.default_rng(0)
    cfg = AuditConfig()
    artefact = _grids(rng, 40, at=2 * GRID + 12)
    lesions = _grids(rng, 60)
    model = fit_group(np.concatenate([artefact, lesions]), cfg)
    assert model.k >= 2
    labels = model.assign(np.concatenate([artefact, lesions]))
    assert len(set(labels[:40])) == 1 and labels[0] not in set(labels[40:])
    verdicts = {}
    for j in range(model.k):
        t = Tally()
        rows = labels == j
        tally_rows(t, np.concatenate([artefact, lesions])[rows], {}, model.places[j], cfg.member_density)
        verdicts[j] = judge(t, model.places[j], 100, cfg)
    assert verdicts[labels[0]].suspect, verdicts[labels[0]].reason
    assert not any(v.suspect for j, v in verdicts.items() if j != labels[0])


def test_a_shared_place_on_the_lesions_is_not_suspect():
    rng = np.random.default_rng(1)
    cfg = AuditConfig()
    grids = _grids(rng, 30, at=40)
    place = place_of(grids.mean(axis=0), cfg.place_mass)
    t = Tally()
    tally_rows(t, grids, {"lesion_lift": np.full(30, 8.0)}, place, cfg.member_density)
    v = judge(t, place, 30, cfg)
    assert not v.suspect and "on the lesions" in v.reason
    few = Tally()
    tally_rows(few, grids[:5], {}, place, cfg.member_density)
    assert "too few" in judge(few, place, 30, cfg).reason


def test_a_place_every_map_shares_is_discounted_by_the_baseline():
    """The frame's edge, where every map has mass (zero padding), makes no place: the excess over the mean map does."""
    from drray.audit.strategies import excess_place

    edge = np.zeros(GRID * GRID)
    edge[:GRID] = 0.6 / GRID  # the top row: shared by all maps
    c = edge.copy()
    c[5 * GRID + 5] = 0.4
    baseline = edge + 0.4 / (GRID * GRID)
    assert np.flatnonzero(excess_place(c, baseline, 0.5)).tolist() == [5 * GRID + 5]
    assert excess_place(c, None, 0.5).sum() > 1


def test_frames_mirror_left_eyes_back_to_the_camera():
    from drray.audit.strategies import to_frame

    g = np.zeros((2, GRID * GRID), np.float32)
    g[:, 3] = 1.0  # row 0, column 3 in the fundus frame
    cam = to_frame(g, np.array([True, False]), "camera")
    assert cam[0, GRID - 1 - 3] == 1.0 and cam[1, 3] == 1.0
    assert to_frame(g, np.array([True, False]), "fundus") is g
    with pytest.raises(ValueError, match="unknown frame"):
        to_frame(g, np.array([True, False]), "retina")


def test_the_control_place_has_the_same_size_and_lies_elsewhere():
    place = np.zeros(GRID * GRID, bool)
    place[[GRID * 2 + 12, GRID * 2 + 13]] = True
    ctrl = control_place(place)
    assert ctrl.sum() == place.sum() and not (ctrl & place).any()


# ------------------------------------------------------------------------------ intervention
def test_regions_mirror_back_for_left_eyes_and_removal_erases_an_artefact():
    place = np.zeros(GRID * GRID, bool)
    place[GRID * 4 + 12] = True
    right, left = region_mask(place, 64, False, grow=0), region_mask(place, 64, True, grow=0)
    assert right[16:20, 48:52].all() and right.sum() == 16
    assert left[16:20, 12:16].all() and left.sum() == 16
    img = np.full((64, 64, 3), 120, np.uint8)
    img[17:19, 49:51] = 255
    for how in ("inpaint", "blur"):
        out = remove_region(img, region_mask(place, 64, False), how)
        assert out[17:19, 49:51].max() < 200
        assert (out[40:, :20] == 120).all()  # untouched outside the region
    with pytest.raises(ValueError, match="inpaint or blur"):
        remove_region(img, right, "erase")


def test_confirm_needs_the_place_to_change_far_more_than_the_control():
    import pandas as pd

    strategies = pd.DataFrame({"strategy": ["a", "b"], "verdict": ["suspect", "suspect"], "intervened": 0,
                               "changed_removed": np.nan, "changed_control": np.nan, "flips_removed": np.nan,
                               "flips_control": np.nan, "confirmed": None})
    rows = []
    for i in range(10):
        rows.append({"strategy": "a", "pred": 2, "pred_removed": 0 if i < 6 else 2, "pred_control": 2 if i else 0,
                     "referable_prob": 0.9, "referable_prob_removed": 0.1 if i < 6 else 0.9,
                     "referable_prob_control": 0.9, "error": None})
        rows.append({"strategy": "b", "pred": 2, "pred_removed": 0 if i < 3 else 2, "pred_control": 0 if i < 2 else 2,
                     "referable_prob": 0.9, "referable_prob_removed": 0.9, "referable_prob_control": 0.9,
                     "error": None})
    out = confirm(strategies, pd.DataFrame(rows), AuditConfig()).set_index("strategy")
    assert out.loc["a", "changed_removed"] == pytest.approx(0.6) and out.loc["a", "changed_control"] == pytest.approx(0.1)
    assert out.loc["a", "flips_removed"] == pytest.approx(0.6)
    assert bool(out.loc["a", "confirmed"]) and not bool(out.loc["b", "confirmed"])


# ------------------------------------------------------------------------------ artefacts
@pytest.mark.parametrize("kind", KINDS)
def test_each_artefact_marks_the_same_place_in_every_photograph(kind):
    rng = np.random.default_rng(3)
    a = (rng.random((96, 96, 3)) * 120 + 60).astype(np.uint8)
    b = (rng.random((96, 96, 3)) * 120 + 60).astype(np.uint8)
    da = np.abs(stamp(a, kind, 5).astype(int) - a).sum(axis=2) > 30
    db = np.abs(stamp(b, kind, 5).astype(int) - b).sum(axis=2) > 30
    assert da.any() and (da & db).sum() >= 0.7 * da.sum()
    with pytest.raises(ValueError, match="unknown artefact"):
        stamp(a, "smudge")


def test_hidden_artefacts_differ_by_seed():
    img = np.full((96, 96, 3), 128, np.uint8)
    assert not np.array_equal(stamp(img, "hidden", 1), stamp(img, "hidden", 2))


# ------------------------------------------------------------------------------ end to end
E2E = ["synth.n=320", "synth.size=128", "data.preprocess.image_size=128", "data.preprocess.ben_graham=true",
       "data.split_fractions=[0.6,0.1,0.3]", "model.backbone=test_resnet", "model.head=ordinal", "train.epochs=8",
       "train.batch_size=16", "train.lr=3.0e-3", "train.augment=false", "train.cpus_per_worker=1", "train.early_stopping_patience=0",
       "train.materialize=true", "data.decode_cpus=0.5", "cam.methods=[gradcam]", "cam.target_layer=backbone.layer2",
       "explain.select_layer=false", "explain.sanity_images=0", "explain.num_actors=1", "explain.cpus_per_actor=0.5"]


KIND, SEED = "notch", 0


def _shortcut_run(root, kind: str | None, seed: int = 0):
    """A synthetic set (with `kind` stamped as a shortcut), trained briefly, every split explained, audited."""
    from drray.audit.run import audit
    from drray.config import Config
    from drray.data.ingest import ingest
    from drray.data.synth import generate
    from drray.data.synth.artefacts import mark_shortcut
    from drray.explain.pipeline import explain
    from drray.rundir import RunDir
    from drray.training.train import train

    run = RunDir(root)
    cfg = Config.from_yaml(None, [*E2E, f"data.manifest={run.manifest}"])
    generate(cfg.synth, run.synth, parallel=False)
    ingest("synth", run.synth, run.root, seed=0, split_fractions=cfg.data.split_fractions)
    marked = mark_shortcut(run.manifest, kind, seed=seed) if kind else None
    train(cfg, run.root, run.manifest)
    explain(run.manifest, run.model, run.root, cam=cfg.cam, job=cfg.explain, decode_cpus=cfg.data.decode_cpus)
    return audit(run.root, cfg.audit, decode_cpus=cfg.data.decode_cpus), marked


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_audit_finds_a_shortcut_and_confirms_it_by_removing_it(ray_session, tmp_path):
    """A camera notch marks every referable training photograph and half the test photographs: the model uses it,
    the audit flags a strategy at it, removing it changes predictions far more than the control, and the tables and
    the report show it. (The held-out artefacts, whose shape and place the audit is not told, are
    benchmarks/audit_shortcuts.py's `hidden:N`.)"""
    import cv2

    from drray.evaluate.query import query
    from drray.evaluate.report import report

    result, marked = _shortcut_run(tmp_path / "run", KIND, seed=SEED)
    confirmed = result.suspects[result.suspects["confirmed"].fillna(False).astype(bool)]
    assert not confirmed.empty, result.summary()
    # Where the artefact is: stamped on a blank photograph, on the grid (either eye in the fundus frame).
    blank = np.full((128, 128, 3), 128, np.uint8)
    art = np.abs(stamp(blank, KIND, SEED).astype(int) - blank).sum(axis=2) > 30
    cells = cv2.dilate((cv2.resize(art.astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA) > 0.05)
                       .astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    cells = (cells | cells[:, ::-1]).ravel()
    def at_artefact(s) -> bool:
        place = np.unpackbits(np.frombuffer(s["place_cells"], dtype=np.uint8))[:GRID * GRID].astype(bool)
        return bool((place & cells).any())

    # The strongest confirmation is the artefact's, and the camera frame (where it sits for both eyes) has it.
    # Other confirmed strategies may be real too: a briefly trained model calls grade 0 from the optic disc.
    margin = confirmed["changed_removed"] - confirmed["changed_control"]
    best = confirmed.loc[margin.idxmax()]
    assert at_artefact(best), (best["strategy"], best["place"], result.summary())
    assert best["changed_removed"] >= best["changed_control"] + 0.1
    camera = confirmed[confirmed["frame"] == "camera"]
    assert any(at_artefact(s) for _, s in camera.iterrows()), result.summary()
    # Every explanation row has its strategies, the tables agree, and the report shows the verdict.
    rows = query("select count(*) as n, count(strategy) as s, count(camera_strategy) as c from explanations",
                 tmp_path / "run")
    assert rows["n"][0] == rows["s"][0] == rows["c"][0] == result.rows
    inter = query("select strategy, avg((pred_removed != pred)::int) as changed from interventions group by 1",
                  tmp_path / "run").set_index("strategy")["changed"]
    for _, s in confirmed.iterrows():
        assert inter[s["strategy"]] == pytest.approx(s["changed_removed"])
    # The model does use the notch: marked normal-looking test photographs are called referable far more often.
    df = query("select image_id, label, referable_prob from explanations where split = 'test'", tmp_path / "run")
    df = df.merge(marked[["image_id", "marked"]], on="image_id")
    low = df[df["label"] <= 1]
    assert (low[low["marked"]]["referable_prob"] >= 0.5).mean() > (low[~low["marked"]]["referable_prob"] >= 0.5).mean() + 0.3
    html = open(report(tmp_path / "run")).read()
    assert 'class="strategy suspect"' in html and "confirmed" in html


# ------------------------------------------------------------------------------ the pipeline on hand-made maps
def _grid_blob(cells: list[int], rng, noise: float = 0.002) -> bytes:
    g = noise * rng.random(GRID * GRID)
    g[cells] += 1.0
    return (g / g.sum()).astype(np.float16).tobytes()


def _audited_tables(run, n: int = 240):
    """Explanations as drray explain writes them, with map grids: three in four grade-2 predictions carry a
    shared place (cell (2, 12) of the camera frame), the rest scatter their mass as lesions do."""
    import pyarrow as pa

    from test_evaluate import synthetic_explanations, write_explanations, write_side_tables

    expl = synthetic_explanations(n, methods=("gradcam",), seed=5)
    rng = np.random.default_rng(0)
    eyes, grids = [], []
    cell = 2 * GRID + 12
    for i, pred in enumerate(expl["pred"].to_pylist()):
        eye = "left" if i % 2 else "right"
        if pred == 2 and i % 4 != 3:
            # The camera's place; stored in the fundus frame, where a left eye's is mirrored.
            grids.append(_grid_blob([2 * GRID + (GRID - 1 - 12) if eye == "left" else cell], rng))
        else:
            grids.append(_grid_blob(list(rng.choice(GRID * GRID, 8, replace=False)), rng))
        eyes.append(eye)
    for name, values in (("eye", pa.array(eyes)), ("map_grid", pa.array(grids, pa.binary()))):
        expl = expl.set_column(expl.schema.get_field_index(name), name, values)
    run.mkdir(parents=True, exist_ok=True)
    write_explanations(run, expl)
    write_side_tables(run, expl)
    return expl, cell


@pytest.mark.timeout(300)
def test_audit_writes_strategies_every_row_gets_its_own_and_query_joins_them(ray_session, tmp_path):
    from drray.audit.run import audit
    from drray.evaluate.query import query

    expl, cell = _audited_tables(tmp_path / "run")
    result = audit(tmp_path / "run", intervene=False)
    assert result.rows == expl.num_rows
    s = result.strategies
    suspects = s[s["verdict"] == "suspect"]
    camera = suspects[(suspects["frame"] == "camera") & (suspects["class"] == "grade2")]
    assert len(camera) == 1, s[["strategy", "place_area", "density", "at_place", "reason"]].to_string()
    place = np.unpackbits(np.frombuffer(camera["place_cells"].iloc[0], dtype=np.uint8))[:GRID * GRID].astype(bool)
    assert place[cell] and place.sum() <= 2
    assert camera["place"].iloc[0].endswith("upper right")
    # In the fundus frame the camera's place is two places, mirror images (one per eye): the suspects cover both.
    fundus = suspects[(suspects["frame"] == "fundus") & (suspects["class"] == "grade2")]
    covered = np.zeros(GRID * GRID, bool)
    for blob in fundus["place_cells"]:
        covered |= np.unpackbits(np.frombuffer(blob, dtype=np.uint8))[:GRID * GRID].astype(bool)
    assert covered[cell] and covered[2 * GRID + GRID - 1 - 12]
    # Scattered maps are never suspect (the referable class holds the grade-2 maps: its suspects are theirs).
    others = s[~s["class"].isin(["grade2", "referable"])]
    assert not (others["verdict"] == "suspect").any(), others[["strategy", "images", "place_area", "density",
                                                               "at_place"]].to_string()
    assert s["confirmed"].isna().all() and (s["intervened"] == 0).all()
    # Every explanation row has its four strategies, consistent with the strategies table.
    rows = query("select strategy, referable_strategy, camera_strategy, camera_referable_strategy, pred "
                 "from explanations", tmp_path / "run")
    assert len(rows) == expl.num_rows and rows.notna().all().all()
    counts = query("select camera_strategy as strategy, count(*) as n from explanations group by 1",
                   tmp_path / "run").set_index("strategy")["n"]
    for _, r in s[(s["frame"] == "camera") & (s["grouping"] == "grade")].iterrows():
        assert counts[r["strategy"]] == r["images"]
    assert set(rows["strategy"].str.split("/").str[2]) == {f"grade{p}" for p in rows["pred"]}


def test_audit_cli_says_what_is_missing(ray_session, tmp_path):
    import subprocess
    import sys

    import pyarrow.parquet as pq

    from test_evaluate import write_run

    def run(*args):
        return subprocess.run([sys.executable, "-m", "drray", "audit", *args], capture_output=True, text=True,
                              timeout=120)

    r = run("--run", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no explanations table" in r.stderr
    write_run(tmp_path / "predicted")  # no row has a map grid
    r = run("--run", str(tmp_path / "predicted"))
    assert r.returncode == 2 and "hold no map grids" in r.stderr
    write_run(tmp_path / "old")  # explanations written before drray stored map descriptors: no such columns
    for f in (tmp_path / "old" / "explanations").rglob("*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["map_grid", "eye"]), f)
    r = run("--run", str(tmp_path / "old"))
    assert r.returncode == 2 and "no map_grid, eye column" in r.stderr and "run `drray explain` again" in r.stderr
    assert not (tmp_path / "old" / "strategies.parquet").exists()
    r = run("--run", str(tmp_path / "old"), "audit.intervention=erase")
    assert r.returncode == 2 and "audit.intervention must be one of inpaint, blur" in r.stderr
    r = run("--run", str(tmp_path / "old"), "audit.max_place_area=2")
    assert r.returncode == 2 and "audit.max_place_area must be in [0, 1]" in r.stderr


@pytest.mark.timeout(300)
def test_audit_cli_on_a_run_with_maps(ray_session, tmp_path):
    import subprocess
    import sys

    _audited_tables(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "drray", "audit", "--run", str(tmp_path / "run"), "--no-intervene"],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "suspect gradcam/camera/grade2/s" in r.stdout and "not tested" in r.stdout
    assert (tmp_path / "run" / "strategies.parquet").exists() and (tmp_path / "run" / "strategy_of.parquet").exists()
    assert not (tmp_path / "run" / "interventions.parquet").exists()
