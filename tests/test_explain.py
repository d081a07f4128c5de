"""drray explain: row scoring, the sink's exactly-once files, and the Ray Data pipeline end to end.

The end-to-end tests run on a hand-made fundus set (drawn here, ingested with drray.data.ingest as
the `synth` source): a dim orange disc with a bright optic disc in every image and, in lesion
images (grade 2), a cluster of small exudates and haemorrhages with their masks. The optic disc
is in every image, so a model that learned the grades must look at the lesions, not at it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pyarrow.dataset as pads
import pytest
from PIL import Image

from drray.config import CamConfig, ExplainConfig, PreprocessConfig
from drray.data.mask_bits import mask_bits
from drray.explain.pipeline import ExplainResult, plan_work
from drray.data.geometry import Geometry
from drray.scores.map_scores import map_scores as score_one_map
from drray.scores.map_scores import shrink_map
from drray.cam.overlay import blend, overlay_png
from drray.schema import EXPLAIN_STREAM_SCHEMA, EXPLANATIONS_SCHEMA, MASK_COLUMNS, Reason

SIZE = 64  # network input of the pipeline tests


# ----------------------------------------------------------------------------------- fixtures
def _disc(shape: tuple[int, int], cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def draw_fundus(rng: np.random.Generator, size: int, lesions: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One photograph (size x size RGB uint8) and its masks by type ("od", and "ex", "he" with lesions)."""
    shape = (size, size)
    c = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
    fov = _disc(shape, c[0], c[1], 0.46 * size)
    img = np.zeros((size, size, 3), np.float32)
    img[fov] = (150, 70, 35)
    img[fov] += rng.normal(0, 6, (int(fov.sum()), 3))
    side = rng.choice([-1, 1])
    od = _disc(shape, c[0] + rng.uniform(-0.05, 0.05) * size, c[1] + side * 0.24 * size, 0.08 * size)
    img[od] = (245, 225, 150)
    masks = {"od": od}
    if lesions:
        # A cluster on the side away from the optic disc.
        centre = c + np.array([rng.uniform(-0.15, 0.15), -side * rng.uniform(0.1, 0.2)]) * size
        ex = np.zeros(shape, bool)
        he = np.zeros(shape, bool)
        for k in range(6):
            y, x = centre + rng.uniform(-0.08, 0.08, 2) * size
            blob = _disc(shape, y, x, rng.uniform(0.02, 0.035) * size) & fov & ~od
            (ex if k % 2 == 0 else he)[blob] = True
        img[ex] = (240, 215, 80)
        img[he & ~ex] = (80, 10, 10)
        masks["ex"], masks["he"] = ex, he & ~ex
    return np.clip(img, 0, 255).astype(np.uint8), masks


def make_fundus_set(root: Path, n: int, size: int = 96, seed: int = 0) -> Path:
    """Write n photographs (half with lesions, grade 2; half grade 0), masks and labels.csv under root."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        lesions = i % 2 == 1
        img, masks = draw_fundus(rng, size, lesions)
        image_id = f"img{i:03d}"
        Image.fromarray(img).save(root / "images" / f"{image_id}.png")
        row = {"image_id": image_id, "path": f"images/{image_id}.png", "label": 2 if lesions else 0,
               "patient_id": f"p{i:03d}", "eye": "left"}
        for col in MASK_COLUMNS:
            t = col[len("mask_"):]
            row[col] = ""
            if t in masks:
                rel = f"masks/{image_id}_{t}.png"
                Image.fromarray(masks[t].astype(np.uint8) * 255).save(root / rel)
                row[col] = rel
        rows.append(row)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def ingest_set(root: Path, out: Path) -> Path:
    from drray.data.ingest import ingest

    ingest("synth", root, out, seed=0)
    return out / "manifest.parquet"


def save_tiny_model(out: Path, size: int = SIZE, seed: int = 0, target_layer: str | None = None):
    import torch

    from drray.models.model import create_model, save_model

    torch.manual_seed(seed)
    model = create_model("test_resnet", image_size=size, preprocess=PreprocessConfig(image_size=size),
                         cam_target_layer=target_layer)
    save_model(model.eval(), out)
    return model


def read_explanations(out: Path) -> pa.Table:
    return pads.dataset(out / "explanations", format="parquet", partitioning="hive").to_table()


def read_errors(out: Path) -> pa.Table:
    d = out / "explain_errors"
    if not d.is_dir() or not any(d.glob("*.parquet")):
        return pa.table({"image_id": pa.array([], pa.string())})
    return pads.dataset(d, format="parquet").to_table()


# ------------------------------------------------------------------------------- row scoring
def _geometry(box: tuple[int, int, int], shape: tuple[int, int], disc: tuple[float, float, float] | None = None,
              size: int | None = None) -> Geometry:
    """A decode geometry: crop `box` (y0, x0, side) of an (H, W) photograph, and a field-of-view disc
    (cy, cx, r) on the prepared `size` grid, or none (no fundus found)."""
    y0, x0, side = box
    field = {}
    if disc is not None:
        cy, cx, r = disc
        field = dict(fov_cy=cy, fov_cx=cx, fov_r=r, fov_top=0.0, fov_bottom=float(size), fov_left=0.0,
                     fov_right=float(size))
    return Geometry(y0, x0, side, shape[0], shape[1], quality_ok=disc is not None, **field)


def map_scores(cam, bits, box, shape, cam_size, tolerance, disc=None, grid_stride=None) -> dict:
    """The explanation-row columns `drray.scores.map_scores.map_scores` gives one map."""
    geometry = _geometry(box, shape, disc, cam.shape[0])
    return score_one_map(cam, geometry, bits, cam_size=cam_size, tolerance=tolerance, grid_stride=grid_stride).columns


@pytest.mark.timeout(30)
def test_map_scores_peak_goes_to_original_image_coordinates():
    cam = np.zeros((8, 8), np.float32)
    cam[6, 2] = 1.0
    # The prepared 8 px image is the 40 px square at (y0=10, x0=20) of a 60 x 100 photograph.
    row = map_scores(cam, None, (10, 20, 40), (60, 100), cam_size=4, tolerance=0.0)
    assert row["peak_y"] == pytest.approx((10 + 6.5 * 5) / 60)
    assert row["peak_x"] == pytest.approx((20 + 2.5 * 5) / 100)
    stored = np.frombuffer(row["cam"], np.float16).reshape(row["cam_h"], row["cam_w"])
    assert stored.shape == (4, 4) and stored.argmax() == np.ravel_multi_index((3, 1), (4, 4))
    assert row["cam_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert row["pointing_hit"] is None and row["energy_in_lesions"] is None and row["od_energy"] is None


@pytest.mark.timeout(30)
def test_map_scores_with_masks_and_null_for_absent_types():
    cam = np.zeros((10, 10), np.float32)
    cam[2, 2] = 1.0
    cam[7, 7] = 0.5
    ex = np.zeros((10, 10), bool)
    ex[2, 3] = True  # one pixel right of the peak
    od = np.zeros((10, 10), bool)
    od[7, 7] = True
    bits = mask_bits({"ex": ex, "od": od}, (10, 10))
    hit = map_scores(cam, bits, (0, 0, 10), (10, 10), cam_size=10, tolerance=0.1)
    miss = map_scores(cam, bits, (0, 0, 10), (10, 10), cam_size=10, tolerance=0.0)
    assert hit["pointing_hit"] is True and miss["pointing_hit"] is False
    assert hit["energy_in_lesions"] == pytest.approx(0.0)
    assert hit["energy_ex"] == pytest.approx(0.0)
    assert hit["od_energy"] == pytest.approx(0.5 / 1.5)
    for t in ("ma", "he", "se", "nv"):
        assert hit[f"energy_{t}"] is None  # no pixel of that type: nothing to measure against
    lesion_free = map_scores(cam, mask_bits({"od": od}, (10, 10)), (0, 0, 10), (10, 10), 10, 0.1)
    assert lesion_free["pointing_hit"] is None and lesion_free["energy_in_lesions"] is None
    assert lesion_free["od_energy"] == pytest.approx(0.5 / 1.5)


@pytest.mark.timeout(30)
def test_map_scores_inside_the_field_of_view_compare_with_chance_like_for_like():
    """A peak in the black border is no answer: maps are scored (and stored) inside the fundus."""
    from drray.data.geometry import disc_mask

    size = 20
    disc = (9.5, 9.5, 8.0)
    field = disc_mask(*disc, size)
    he = np.zeros((size, size), bool)
    he[9:11, 9:11] = True
    bits = mask_bits({"he": he}, (size, size))
    cam = np.zeros((size, size), np.float32)
    cam[0, 0] = 1.0  # the corner: outside the disc
    cam[10, 10] = 0.6  # on the lesion
    row = map_scores(cam, bits, (0, 0, size), (size, size), cam_size=size, tolerance=0.0, disc=disc)
    assert row["pointing_hit"] is True and row["energy_in_lesions"] == pytest.approx(1.0)
    stored = np.frombuffer(row["cam"], np.float16).reshape(size, size)
    assert stored[0, 0] == 0 and stored.max() == pytest.approx(1.0)
    unrestricted = map_scores(cam, bits, (0, 0, size), (size, size), cam_size=size, tolerance=0.0)
    assert unrestricted["pointing_hit"] is False  # without a field the corner wins
    # A uniform map scores exactly the lesion area share: the baseline `lesion_area` stands for.
    flat = map_scores(np.ones((size, size), np.float32), bits, (0, 0, size), (size, size), cam_size=size,
                      tolerance=0.0, disc=disc)
    assert flat["energy_in_lesions"] == pytest.approx(flat["lesion_area"])
    # The ideal map on the grid of the layer the map came from: exact at stride 1, the lesions drawn in
    # 4-px cells at stride 4, and nothing without the stride or the field.
    from drray.scores.localisation import ideal_energy_share

    assert flat["ideal_energy"] is None
    fine = map_scores(cam, bits, (0, 0, size), (size, size), cam_size=size, tolerance=0.0, disc=disc,
                      grid_stride=1)
    coarse = map_scores(cam, bits, (0, 0, size), (size, size), cam_size=size, tolerance=0.0, disc=disc,
                        grid_stride=4)
    assert fine["ideal_energy"] == pytest.approx(1.0)
    assert coarse["ideal_energy"] == pytest.approx(ideal_energy_share(he, field, 4))
    assert flat["lesion_area"] < coarse["ideal_energy"] < 1.0
    assert map_scores(cam, bits, (0, 0, size), (size, size), cam_size=size, tolerance=0.0,
                      grid_stride=4)["ideal_energy"] is None


@pytest.mark.timeout(30)
def test_map_scores_of_an_empty_map_are_null_or_a_miss():
    bits = mask_bits({"he": np.ones((6, 6), bool)}, (6, 6))
    row = map_scores(np.zeros((6, 6), np.float32), bits, (0, 0, 6), (6, 6), cam_size=3, tolerance=0.5)
    assert row["peak_y"] is None and row["cam_entropy"] is None
    assert row["pointing_hit"] is False and row["energy_in_lesions"] is None


@pytest.mark.timeout(30)
def test_shrink_map_keeps_mass_distribution():
    cam = np.zeros((8, 8), np.float32)
    cam[:4, :4] = 1.0
    small = shrink_map(cam, 2)
    np.testing.assert_allclose(small, [[1.0, 0.0], [0.0, 0.0]])


@pytest.mark.timeout(30)
def test_overlay_png_is_a_thumbnail_of_the_requested_size():
    image = np.full((32, 32, 3), 128, np.uint8)
    cam = np.zeros((32, 32), np.float32)
    cam[:16] = 1.0
    png = overlay_png(image, cam, size=20)
    thumb = np.asarray(Image.open(io.BytesIO(png)))
    assert thumb.shape == (20, 20, 3)
    # Jet: hot (red) where the map is 1, cold (blue) where it is 0.
    assert thumb[2, 10, 0] > thumb[2, 10, 2] and thumb[18, 10, 2] > thumb[18, 10, 0]
    np.testing.assert_array_equal(blend(image, cam, alpha=0.0), image)
    with pytest.raises(ValueError, match="uint8"):
        blend(image.astype(np.float32), cam)


def _decoded_batch(n: int, size: int) -> dict[str, np.ndarray]:
    """What drray.data.decode.decode_batch gives for n readable images (lesion-free masks, no field of view found)."""
    rng = np.random.default_rng(0)
    return {
        "image_id": np.array([f"i{k}" for k in range(n)], dtype=object),
        "dataset": np.array(["synth"] * n, dtype=object),
        "split": np.array(["test"] * n, dtype=object),
        "label": np.full(n, -1, np.int16),
        "path": np.array([f"/data/i{k}.png" for k in range(n)], dtype=object),
        "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        "masks": np.zeros((n, size, size), np.uint8),
        "error_reason": np.array([""] * n, dtype=object),
        "error_detail": np.array([""] * n, dtype=object),
        **{k: np.full(n, v) for k, v in Geometry(0, 0, size, size, size, quality_ok=True).columns().items()},
    }


@pytest.mark.timeout(60)
def test_explainer_isolates_the_image_the_model_fails_on(tmp_path):
    from drray.explain.actor import BatchExplainer

    save_tiny_model(tmp_path / "model")
    explainer = BatchExplainer(str(tmp_path / "model"), ["gradcam"], CamConfig(cam_size=8, overlay_size=16))
    real_explain = explainer.predictor.explain

    def explain_failing_on_black(images):
        if (images.reshape(len(images), -1).max(axis=1) == 0).any():
            raise RuntimeError("non-finite activations")
        return real_explain(images)

    explainer.predictor.explain = explain_failing_on_black
    batch = _decoded_batch(4, SIZE)
    batch["image"][2] = 0
    batch["error_reason"][3], batch["error_detail"][3] = Reason.CORRUPT_IMAGE, "bad bytes"
    out = explainer(batch).to_pylist()
    by_id = {r["image_id"]: r for r in out}
    assert len(out) == 4 and by_id["i0"]["reason"] is None and by_id["i1"]["reason"] is None
    assert by_id["i0"]["label"] is None and by_id["i0"]["cam_method"] == "gradcam"
    assert by_id["i2"]["reason"] == Reason.EXPLAIN_FAILED and by_id["i2"]["stage"] == "explain"
    assert "non-finite activations" in by_id["i2"]["detail"]
    assert by_id["i3"]["reason"] == Reason.CORRUPT_IMAGE and by_id["i3"]["stage"] == "decode"
    assert by_id["i3"]["source"] == "/data/i3.png"


# --------------------------------------------------------------------------------- planning
@pytest.mark.timeout(30)
def test_plan_work_skips_done_rows_and_failed_images():
    import pandas as pd

    manifest = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "path": ["a", "b", "c", "d"]})
    done = pd.DataFrame({"image_id": ["a", "a", "b"], "cam_method": ["gradcam", "gradcam++", "gradcam"]})
    failed = pd.DataFrame({"image_id": ["d"]})
    groups, skipped_rows, skipped_images = plan_work(manifest, ["gradcam", "gradcam++"], done, failed)
    assert skipped_rows == 3 and skipped_images == 1
    assert {k: list(v["image_id"]) for k, v in groups.items()} == {("gradcam++",): ["b"],
                                                                    ("gradcam", "gradcam++"): ["c"]}
    # Predict-only rows have a null cam_method and do not count as a map.
    done = pd.DataFrame({"image_id": ["a", "b"], "cam_method": [None, "gradcam"]})
    groups, skipped_rows, _ = plan_work(manifest, [], done, pd.DataFrame(columns=["image_id"]))
    assert skipped_rows == 1 and {k: list(v["image_id"]) for k, v in groups.items()} == {(): ["b", "c", "d"]}


# ------------------------------------------------------------------------------------- sink
def _rows(ids: list[str], reasons: list[str | None]) -> pa.Table:
    n = len(ids)
    cols = {name: [None] * n for name in EXPLAIN_STREAM_SCHEMA.names}
    cols.update(image_id=ids, dataset=["synth"] * n, split=["test"] * n, model_id=["m"] * n,
                cam_method=["gradcam"] * n, reason=reasons, stage=["decode" if r else None for r in reasons],
                source=[f"{i}.png" for i in ids])
    return pa.Table.from_pydict(cols, schema=EXPLAIN_STREAM_SCHEMA)


@pytest.mark.timeout(30)
def test_write_part_splits_rows_and_a_retried_task_replaces_its_files(tmp_path):
    from drray.explain.sink import write_part

    table = _rows(["a", "b", "c"], [None, Reason.CORRUPT_IMAGE, None])
    first = write_part(tmp_path, "run1-000003", table)
    again = write_part(tmp_path, "run1-000003", table)  # Ray ran the same write task twice
    assert first.rows == again.rows == 2 and first.errors == {Reason.CORRUPT_IMAGE: 1}
    expl = read_explanations(tmp_path)
    assert sorted(expl["image_id"].to_pylist()) == ["a", "c"]
    assert expl.schema.field("split").type == pa.string()
    errors = read_errors(tmp_path)
    assert errors["image_id"].to_pylist() == ["b"] and errors["reason"].to_pylist() == [Reason.CORRUPT_IMAGE]
    assert not (tmp_path / ".staging" / "run1-000003").exists()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert files == ["explain_errors/part-run1-000003.parquet",
                     "explanations/dataset=synth/split=test/part-run1-000003-0.parquet"]


@pytest.mark.timeout(30)
def test_explain_result_summary_names_counts_and_places():
    r = ExplainResult(out="/runs/x", model_id="m1", methods=["gradcam"], run_id="r", images=10, rows_written=9,
                      skipped_done=4, skipped_failed=1, errors={"corrupt_image": 1}, seconds=2.0)
    text = r.summary()
    assert "9 rows" in text and "/runs/x/explanations" in text and "corrupt_image: 1" in text
    assert "skipped 4 rows" in text


# ------------------------------------------------------------------------------- end to end
N_IMAGES = 16


@pytest.fixture(scope="module")
def fundus_run(tmp_path_factory):
    """A small ingested set (one image corrupted after ingest), a random tiny model, the corrupt file's reason."""
    from drray.data.images import ImageError, read_rgb

    base = tmp_path_factory.mktemp("explain")
    manifest = ingest_set(make_fundus_set(base / "data", N_IMAGES), base / "run")
    save_tiny_model(base / "model")
    broken = base / "data" / "images" / "img004.png"
    broken.write_bytes(broken.read_bytes()[: 200])  # truncated after ingest probed it
    with pytest.raises(ImageError) as info:
        read_rgb(broken)
    return {"manifest": manifest, "model": base / "model", "base": base, "reason": info.value.reason}


def _keys(out: Path) -> list[tuple[str, str | None]]:
    t = pads.dataset(out / "explanations", format="parquet", partitioning="hive").to_table(
        columns=["image_id", "cam_method"])
    return list(zip(t["image_id"].to_pylist(), t["cam_method"].to_pylist()))


@pytest.mark.timeout(150)
def test_explain_writes_the_schema_errors_and_reruns_idempotently(ray_session, fundus_run):
    import duckdb

    from drray.explain.pipeline import explain

    out = fundus_run["base"] / "out"
    cam = CamConfig(cam_size=16, overlay_size=48)
    result = explain(fundus_run["manifest"], fundus_run["model"], out, methods=["gradcam", "GradCAM++"], cam=cam,
                     job=ExplainConfig(batch_size=4))
    good = N_IMAGES - 1
    assert result.methods == ["gradcam", "gradcam++"]
    assert result.images == N_IMAGES and result.rows_written == 2 * good
    assert result.errors == {fundus_run["reason"]: 1}

    # Schema: every column of the design with its type (partition columns come back as strings).
    table = read_explanations(out)
    for f in EXPLANATIONS_SCHEMA:
        assert table.schema.field(f.name).type == f.type, f.name
    assert sorted(Counter(_keys(out)).values()) == [1] * (2 * good)
    assert "img004" not in set(table["image_id"].to_pylist())

    errors = read_errors(out)
    assert errors.num_rows == 1
    err = errors.to_pylist()[0]
    assert err["image_id"] == "img004" and err["reason"] == fundus_run["reason"] and err["stage"] == "decode"
    assert err["source"].endswith("img004.png") and err["model_id"] == result.model_id

    rows = duckdb.sql(f"""
        select image_id, label, pred, probs, referable_prob, cam, cam_h, cam_w, peak_y, peak_x, cam_entropy,
               pointing_hit, energy_in_lesions, energy_ex, energy_ma, od_energy, overlay_png, target_class,
               lesion_area, chance_hit, cam_layer, ideal_energy
        from read_parquet('{out}/explanations/**/*.parquet', hive_partitioning=true)
    """).fetchall()
    assert len(rows) == 2 * good
    for (image_id, label, pred, probs, referable, cam_blob, h, w, py, px, ent, hit, e_les, e_ex, e_ma, e_od,
         png, target, area, chance, layer, ideal) in rows:
        assert layer.startswith("backbone.")
        assert abs(sum(probs) - 1) < 1e-4 and referable == pytest.approx(sum(probs[2:]), abs=1e-5)
        assert pred == target == int(np.argmax(probs))
        stored = np.frombuffer(cam_blob, np.float16).reshape(h, w)
        assert (h, w) == (16, 16) and 0.0 <= stored.min() and stored.max() <= 1.0
        assert 0.0 <= py <= 1.0 and 0.0 <= px <= 1.0 and 0.0 <= ent <= 1.0
        assert Image.open(io.BytesIO(png)).size == (48, 48)
        assert e_od is not None and e_ma is None  # every image has an optic disc, none has microaneurysms
        if label == 2:
            assert hit is not None and 0.0 <= e_les <= 1.0 and e_ex is not None
            # A random peak in the fundus hits a lesion at least as often as lesions cover it.
            assert 0.0 < area <= chance < 1.0
            # The masks drawn on the layer's grid hold more of their mass on the lesions than a uniform map.
            assert area < ideal < 1.0
        else:
            assert hit is None and e_les is None and e_ex is None and area is None and chance is None
            assert ideal is None

    # The same command again: nothing new, nothing twice, the failed image not retried.
    files = sorted((out / "explanations").rglob("*.parquet"))
    again = explain(fundus_run["manifest"], fundus_run["model"], out, methods=["gradcam", "gradcam++"], cam=cam)
    assert again.images == 0 and again.rows_written == 0 and again.errors == {}
    assert again.skipped_done == 2 * good and again.skipped_failed == 1
    assert sorted((out / "explanations").rglob("*.parquet")) == files
    assert read_errors(out).num_rows == 1

    # A new method adds only its own rows.
    more = explain(fundus_run["manifest"], fundus_run["model"], out, methods=["gradcam", "layercam"], cam=cam)
    assert more.rows_written == good and more.skipped_done == good
    counts = Counter(m for _, m in _keys(out))
    assert counts == {"gradcam": good, "gradcam++": good, "layercam": good}
    assert max(Counter(_keys(out)).values()) == 1
    assert not (out / ".staging").exists()


@pytest.mark.timeout(120)
def test_predict_only_mode_writes_one_row_per_image_without_maps(ray_session, fundus_run):
    from drray.explain.pipeline import explain

    out = fundus_run["base"] / "predict_only"
    result = explain(fundus_run["manifest"], fundus_run["model"], out, methods=(), job=ExplainConfig(batch_size=8))
    assert result.methods == [] and result.rows_written == N_IMAGES - 1
    table = read_explanations(out)
    assert table.num_rows == N_IMAGES - 1
    assert table["cam_method"].null_count == table.num_rows and table["cam"].null_count == table.num_rows
    assert table["pointing_hit"].null_count == table.num_rows
    probs = np.array(table["probs"].to_pylist())
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(table["pred"].to_numpy(), probs.argmax(axis=1))
    again = explain(fundus_run["manifest"], fundus_run["model"], out, methods=(), job=ExplainConfig(batch_size=8))
    assert again.rows_written == 0 and again.skipped_done == N_IMAGES - 1


@pytest.mark.timeout(120)
def test_faithfulness_flag_adds_road_scores(ray_session, fundus_run):
    from drray.explain.pipeline import explain

    out = fundus_run["base"] / "road"
    result = explain(fundus_run["manifest"], fundus_run["model"], out, methods=["gradcam"],
                     cam=CamConfig(faithfulness=True), job=ExplainConfig(batch_size=4), split="test")
    assert result.rows_written >= 1
    road = read_explanations(out)["road_score"].to_numpy(zero_copy_only=False)
    assert len(road) == result.rows_written and np.isfinite(road.astype(float)).all()


@pytest.mark.timeout(60)
def test_unknown_method_fails_before_any_work(tmp_path, fundus_run):
    from drray.explain.pipeline import explain

    with pytest.raises(ValueError, match="unknown CAM method 'gradcamm'"):
        explain(fundus_run["manifest"], fundus_run["model"], tmp_path, methods=["gradcamm"])
    assert not (tmp_path / "explanations").exists()


def train_tiny_model(size: int, target_layer: str, n: int = 64, epochs: int = 15):
    """test_resnet trained with a plain torch loop to tell grade 2 (lesions) from grade 0, deterministically."""
    import torch

    from drray.models.model import create_model
    from drray.data.preprocess import prepare

    cfg = PreprocessConfig(image_size=size)
    rng = np.random.default_rng(1)
    images, labels = [], []
    for i in range(n):
        img, _ = draw_fundus(rng, 96, lesions=i % 2 == 1)
        images.append(prepare(img, cfg).image)  # what the pipeline's decode step feeds the model
        labels.append(2 if i % 2 == 1 else 0)
    torch.manual_seed(0)
    model = create_model("test_resnet", image_size=size, preprocess=cfg, cam_target_layer=target_layer)
    x = model.normalize(torch.from_numpy(np.stack(images)))
    y = torch.tensor(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for b in range(0, n, 16):
            idx = perm[b:b + 16]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.timeout(240)
def test_trained_model_points_at_lesions_more_often_than_random_weights(ray_session, tmp_path):
    """Maps follow the model, not the image: same architecture and images, trained vs random weights."""
    from drray.explain.pipeline import explain
    from drray.models.model import save_model

    size, layer = 96, "layer3"  # layer3 (stride 16) gives 6 x 6 maps at 96 px; layer4 only 3 x 3
    save_model(train_tiny_model(size, layer), tmp_path / "trained")
    save_tiny_model(tmp_path / "random", size=size, seed=0, target_layer=layer)
    manifest = ingest_set(make_fundus_set(tmp_path / "data", 40, seed=7), tmp_path / "run")
    cam, job = CamConfig(pointing_tolerance=0.05), ExplainConfig(batch_size=8)
    rates = {}
    for name in ("trained", "random"):
        explain(manifest, tmp_path / name, tmp_path / f"out_{name}", methods=["gradcam"], cam=cam, job=job)
        t = read_explanations(tmp_path / f"out_{name}").to_pandas()
        lesion_rows = t[t["label"] >= 1]
        assert len(lesion_rows) == 20 and lesion_rows["pointing_hit"].notna().all()
        rates[name] = lesion_rows["pointing_hit"].astype(float).mean()
    logging.getLogger(__name__).info("pointing-game hit rate on lesion images: %s", rates)
    assert rates["trained"] >= rates["random"] + 0.3, rates


# A separate Ray instance (a multi-node cluster on this machine), so it runs in its own process.
CLUSTER_SCENARIO = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path

    import pyarrow.dataset as pads
    import ray
    from ray.cluster_utils import Cluster

    from drray.config import ExplainConfig
    from drray.explain.pipeline import explain

    manifest, model, out = sys.argv[1:4]
    # Decode and write tasks on the head; explainers only on the two workers (one each).
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, include_dashboard=False))
    workers = [cluster.add_node(num_cpus=1, resources={"explainer": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    settings = ExplainConfig(batch_size=4, num_actors=2, actor_resources={"explainer": 1})
    result = {}
    job = threading.Thread(target=lambda: result.update(r=explain(manifest, model, out, methods=["gradcam"],
                                                                  job=settings)))
    job.start()
    written = Path(out) / "explanations"
    while job.is_alive() and not list(written.rglob("*.parquet")):
        time.sleep(0.05)
    mid_job = job.is_alive()
    cluster.remove_node(workers[0])  # it held one of the two explainer actors
    cluster.add_node(num_cpus=1, resources={"explainer": 1})  # the replacement an autoscaler would start
    job.join(timeout=120)
    keys = pads.dataset(written, format="parquet", partitioning="hive").to_table(columns=["image_id", "cam_method"])
    print(json.dumps({"mid_job": mid_job, "finished": not job.is_alive(), "rows_written": result["r"].rows_written,
                      "image_ids": keys["image_id"].to_pylist(), "errors": result["r"].errors}))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.timeout(180)
def test_losing_a_worker_node_mid_job_still_explains_every_image_exactly_once(tmp_path):
    import os

    n = 80
    manifest = ingest_set(make_fundus_set(tmp_path / "data", n), tmp_path / "run")
    save_tiny_model(tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", CLUSTER_SCENARIO, str(manifest), str(tmp_path / "model"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=170, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["mid_job"], "the job ended before the node was removed; give it more images"
    assert report["finished"] and report["errors"] == {}
    assert report["rows_written"] == n
    assert sorted(report["image_ids"]) == [f"img{i:03d}" for i in range(n)]  # each image once


@pytest.mark.timeout(180)
def test_explain_runs_the_model_randomisation_check(ray_session, fundus_run, tmp_path):
    """Maps of copies with more and more blocks re-initialised drift away from the trained model's."""
    from drray.explain.pipeline import explain

    out = tmp_path / "sanity"
    cam, job = CamConfig(cam_size=8, overlay_size=16), ExplainConfig(batch_size=4, sanity_images=4, sanity_draws=2)
    result = explain(fundus_run["manifest"], fundus_run["model"], out, methods=["gradcam"], cam=cam, job=job)
    assert result.sanity is not None and result.sanity.images == 4
    table = pa.parquet.read_table(out / "randomisation.parquet").to_pandas()
    assert set(table["cascade"]) == set(range(len(result.sanity.steps)))
    trained = table[table["cascade"] == 0]
    assert np.allclose(trained["rank_corr"], 1.0) and (trained["reinitialised"] == "").all()
    assert set(trained["draw"]) == {0} and len(trained) == 4
    deepest = table[table["cascade"] == table["cascade"].max()]
    assert deepest["rank_corr"].mean() < 0.9
    # Each re-initialised step drawn twice, with different weights: the two draws' maps differ.
    assert set(deepest["draw"]) == {0, 1} and len(deepest) == 8
    by_draw = deepest.sort_values("image_id").groupby("draw")["rank_corr"].apply(list)
    assert by_draw[0] != by_draw[1]
    # A map with no peak scores its image's chance rate in expected_hit, a miss in pointing_hit.
    les = table[table["pointing_hit"].notna()]
    empty = les["empty_map"].astype(bool)
    assert np.allclose(les.loc[empty, "expected_hit"], les.loc[empty, "chance_hit"])
    assert (les.loc[empty, "pointing_hit"] == False).all()  # noqa: E712
    assert np.allclose(les.loc[~empty, "expected_hit"], les.loc[~empty, "pointing_hit"].astype(float))
    assert "randomisation check on 4 images" in result.summary()
    assert explain(fundus_run["manifest"], fundus_run["model"], out, methods=["gradcam"], cam=cam,
                   job=job).sanity is None
