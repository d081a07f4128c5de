"""drray.data.synth: masks cover what is painted, grades follow ICDR, sizes follow anatomy, bytes are reproducible."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drray.config import SynthConfig
from drray.data.images import read_mask, read_rgb
from drray.schema import LESION_TYPES, MASK_COLUMNS, MASK_TYPES
from drray.data.synth import SynthImage, generate, image_id, render
from drray.data.synth.anatomy import sample_geometry
from drray.data.synth.grading import (
    MODERATE_HE_PER_QUADRANT, QUADRANTS, SEVERE_HE_PER_QUADRANT, grade_for, plan_for_grade,
)
from drray.data.synth.lesions import SIZE_RANGES, Lesion, paint, place
from drray.data.synth.render import compose
from drray.data.synth.vessels import vessel_tree


def only_grade(grade: int, size: int = 96, **kw) -> SynthConfig:
    """A config whose every image has `grade` (one-hot class balance)."""
    balance = tuple(1.0 if g == grade else 0.0 for g in range(5))
    return SynthConfig(n=8, size=size, seed=3, class_balance=balance, **kw)


def image_quadrants(im: SynthImage, mask: np.ndarray) -> set[str]:
    """Quadrants (superior/inferior x nasal/temporal, about the field centre) where `mask` has pixels."""
    ys, xs = np.nonzero(mask)
    cx, cy = im.meta["fov"]["cx"], im.meta["fov"]["cy"]
    nasal_right = im.eye == "right"
    out = set()
    for x, y in zip(xs, ys):
        nasal = (x >= cx) if nasal_right else (x <= cx)
        out.add(f"{'superior' if y < cy else 'inferior'}_{'nasal' if nasal else 'temporal'}")
    return out


def fov_rho(im: SynthImage) -> np.ndarray:
    S = im.image.shape[0]
    yy, xx = np.mgrid[0:S, 0:S]
    f = im.meta["fov"]
    return np.hypot(xx - f["cx"], yy - f["cy"]) / f["r"]


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------- API

def test_render_returns_the_public_contract():
    cfg = SynthConfig(n=4, size=80, seed=1)
    im = render(1, 2, cfg)
    assert isinstance(im, SynthImage)
    assert im.image.shape == (80, 80, 3) and im.image.dtype == np.uint8
    assert tuple(im.masks) == MASK_TYPES
    assert all(m.shape == (80, 80) and m.dtype == bool for m in im.masks.values())
    assert im.grade in range(5) and im.eye in ("left", "right")
    assert 60 <= im.jpeg_quality <= 100
    assert set(im.meta["counts"]) == set(LESION_TYPES)
    assert all(set(q) == set(QUADRANTS) for q in im.meta["quadrant_counts"].values())
    assert {"cx", "cy", "r"} <= set(im.meta["fov"]) and isinstance(im.meta["cut_off"], bool)


def test_same_seed_same_pixels_and_different_seeds_differ():
    cfg = SynthConfig(n=4, size=96, seed=5)
    a, b = render(5, 3, cfg), render(5, 3, cfg)
    assert np.array_equal(a.image, b.image) and a.meta == b.meta
    assert all(np.array_equal(a.masks[t], b.masks[t]) for t in MASK_TYPES)
    assert not np.array_equal(a.image, render(6, 3, cfg).image)
    assert not np.array_equal(a.image, render(5, 4, cfg).image)


# ---------------------------------------------------------------------------------- masks vs paint

@pytest.mark.parametrize("grade", [2, 3, 4])
def test_painted_pixels_are_exactly_the_lesion_masks(grade):
    # Lesions draw from their own random stream, so the lesion-free fundus is the same anatomy.
    for index in range(3):
        layers = compose(7, index, only_grade(grade, size=128), keep_clean=True)
        changed = np.abs(layers.refl - layers.clean).max(axis=2) > 0
        union = np.zeros_like(changed)
        for t in LESION_TYPES:
            union |= layers.masks[t]
        assert changed.any()
        assert not (changed & ~union).any(), "a lesion changed pixels outside every mask"
        assert not (union & ~changed).any(), "a mask covers pixels no lesion changed"


def _contrast(images: list[SynthImage], t: str) -> float:
    """Mean green level inside type-t masks minus in a ring of background around them."""
    import cv2

    inside, ring = [], []
    for im in images:
        m = im.masks[t]
        if not m.any():
            continue
        other = np.zeros_like(m)
        for u in MASK_TYPES:
            other |= im.masks[u]
        around = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~other
        g = im.image[..., 1].astype(float)
        inside.append(g[m].mean())
        ring.append(g[around].mean())
    assert inside, f"no {t} lesions rendered"
    return float(np.mean(inside) - np.mean(ring))


def test_lesions_differ_from_background_in_the_expected_direction():
    g3 = [render(11, i, only_grade(3, size=160)) for i in range(3)]
    g4 = [render(11, i, only_grade(4, size=160)) for i in range(3)]
    assert _contrast(g3, "ma") < -5
    assert _contrast(g3, "he") < -5
    assert _contrast(g3 + g4, "ex") > 5
    assert _contrast(g3 + g4, "se") > 2
    assert _contrast(g4, "nv") < 0


# ----------------------------------------------------------------------------------------- grades

def test_grades_follow_icdr_rules():
    for i in range(4):
        im = render(2, i, only_grade(0))
        assert im.grade == 0 and not any(im.masks[t].any() for t in LESION_TYPES)
        im = render(2, i, only_grade(1))
        assert im.grade == 1 and im.masks["ma"].any()
        assert not any(im.masks[t].any() for t in ("he", "ex", "se", "nv"))
        im = render(2, i, only_grade(2))
        assert im.grade == 2 and any(im.masks[t].any() for t in ("he", "ex", "se"))
        assert not im.masks["nv"].any()
        assert max(im.meta["quadrant_counts"]["he"].values()) <= MODERATE_HE_PER_QUADRANT
        im = render(2, i, only_grade(3))
        assert im.grade == 3 and not im.masks["nv"].any()
        assert image_quadrants(im, im.masks["he"]) == set(QUADRANTS)
        assert min(im.meta["quadrant_counts"]["he"].values()) >= SEVERE_HE_PER_QUADRANT
        im = render(2, i, only_grade(4))
        assert im.grade == 4 and im.masks["nv"].any() and im.meta["counts"]["nv"] >= 1


def test_meta_counts_match_the_grade_plan():
    for grade in range(5):
        cfg = only_grade(grade)
        layers, im = compose(4, 0, cfg), render(4, 0, cfg)
        plan = layers.plan
        assert im.meta["counts"]["ma"] == plan.ma
        assert im.meta["counts"]["he"] == sum(plan.he_per_quadrant) + int(plan.preretinal)
        per_q = im.meta["quadrant_counts"]["he"]
        assert all(per_q[q] >= n for q, n in zip(QUADRANTS, plan.he_per_quadrant))
        assert im.meta["counts"]["nv"] == int(plan.nv_disc) + plan.nv_elsewhere


def test_grade_sampler_matches_the_class_balance():
    cfg = SynthConfig()
    rng = np.random.default_rng(0)
    z = rng.standard_normal(20000)
    grades = [grade_for(rng, float(zi), cfg) for zi in z]
    shares = np.bincount(grades, minlength=5) / len(grades)
    assert np.allclose(shares, cfg.class_balance, atol=0.015)


def test_rendered_class_balance_is_near_the_configured_shares():
    cfg = SynthConfig(n=240, size=64, seed=9)
    grades = [render(9, i, cfg).grade for i in range(cfg.n)]
    shares = np.bincount(grades, minlength=5) / cfg.n
    assert np.allclose(shares, cfg.class_balance, atol=0.08), shares


# --------------------------------------------------------------------------------- sizes, anatomy

def test_sampled_lesion_sizes_lie_in_anatomical_ranges():
    rng = np.random.default_rng(0)
    for k in range(6):
        geo = sample_geometry(rng, 400, 0.15)
        plan = plan_for_grade(rng, 4)
        plan.preretinal, plan.se, plan.ex_clusters = True, 3, 3
        for les in place(rng, geo, plan, vessel_tree(rng, geo)):
            kind = les.type if les.type in ("ma", "ex", "se", "nv") else f"he_{les.kind}"
            lo, hi = SIZE_RANGES[kind]
            if les.kind == "disc":
                lo, hi = 0.06, 0.12
            assert lo * geo.D - 1e-6 <= les.size <= hi * geo.D + 1e-6, (les.kind, les.size / geo.D)
    # The brief's anatomical ranges (shares of D) contain the generator's.
    brief = {"ma": (0.003, 0.01), "he": (0.005, 0.05), "ex": (0.002, 0.02), "se": (0.015, 0.05)}
    for kind, (lo, hi) in SIZE_RANGES.items():
        if kind != "nv":
            blo, bhi = brief[kind.split("_")[0]]
            assert blo <= lo and hi <= bhi


@pytest.mark.parametrize("kind,type_", [("ma", "ma"), ("blot", "he"), ("flame", "he"), ("ex", "ex"), ("se", "se")])
def test_painted_mask_extent_matches_the_lesion_size(kind, type_):
    rng = np.random.default_rng(1)
    geo = sample_geometry(rng, 400, 0.15)
    short = {"ma": 1.0, "blot": 0.85, "flame": 0.4, "ex": 0.8, "se": 0.7}[kind]
    for size in (0.5, 1.0):
        lo, hi = SIZE_RANGES["ma" if kind == "ma" else ("he_" + kind if type_ == "he" else kind)]
        d = (lo + size * (hi - lo)) * geo.D
        refl = np.full((400, 400, 3), 0.5, np.float32)
        les = Lesion(type_, kind, 200.0, 200.0, d, aspect=short, angle=0.3, strength=0.9)
        m = paint(rng, refl, geo, [les])[type_]
        pts = np.argwhere(m).astype(float)
        # Feret diameter: the largest distance between two mask pixels, plus one pixel.
        feret = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max() + 1.0
        assert 0.7 * d - 1.0 <= feret <= d + 1.5, (kind, feret, d)


def test_microaneurysms_stay_visible_at_256_px():
    ims = [render(8, i, only_grade(1, size=256)) for i in range(3)]
    for im in ims:
        D = 2 * im.meta["fov"]["r"]
        for les in im.meta["lesions"]:
            assert 1.2 <= les["size"] <= 0.01 * D + 1e-6
    assert _contrast(ims, "ma") < -8


def test_optic_disc_is_about_15_percent_of_the_field_on_the_nasal_side():
    cfg = SynthConfig(n=6, size=160, seed=4)
    for i in range(6):
        im = render(4, i, cfg)
        od = im.masks["od"]
        D = 2 * im.meta["fov"]["r"]
        diameter = 2 * np.sqrt(od.sum() / np.pi)
        assert 0.12 <= diameter / D <= 0.18
        disc_x = np.nonzero(od)[1].mean()
        if im.eye == "right":
            assert disc_x > im.meta["fov"]["cx"]
        else:
            assert disc_x < im.meta["fov"]["cx"]


def test_photometry_is_fundus_like():
    cfg = SynthConfig(n=6, size=128, seed=12)
    for i in range(6):
        im = render(12, i, cfg)
        rho = fov_rho(im)
        inside = im.image[(rho < 0.85) & (im.image.sum(axis=2) > 0)].reshape(-1, 3).mean(axis=0)
        assert inside[0] > inside[1] > inside[2], inside
        outside = im.image[rho > 1.06]
        assert outside.mean() < 6 and np.percentile(outside, 99) < 30


def test_cut_off_fields_are_black_above_and_below_the_band():
    cfg = SynthConfig(n=60, size=64, seed=0)
    cut = [i for i in range(60) if compose(0, i, cfg).geo.band is not None]
    assert 1 <= len(cut) <= 15  # ~10%
    im = render(0, cut[0], cfg)
    assert im.meta["cut_off"]
    top, bottom = im.meta["visible_rows"]
    assert im.image[: int(np.ceil(top))].max() == 0 and im.image[int(np.floor(bottom)) + 1:].max() == 0
    assert not any(m[: int(np.ceil(top))].any() for m in im.masks.values())


def test_patients_pair_left_and_right_eyes():
    cfg = SynthConfig(n=4, size=64, seed=7)
    ims = [render(7, i, cfg) for i in range(4)]
    assert [(im.patient_id, im.eye) for im in ims] == [
        ("p7_0", "left"), ("p7_0", "right"), ("p7_1", "left"), ("p7_1", "right")]
    assert ims[0].jpeg_quality == ims[1].jpeg_quality  # one visit, one camera setting
    solo = SynthConfig(n=4, size=64, seed=7, patients_share_eyes=False)
    assert len({render(7, i, solo).patient_id for i in range(4)}) == 4


# ----------------------------------------------------------------------------------------- files

def _check_layout(out: Path, labels: Path, n: int, size: int) -> list[dict]:
    assert labels == out / "labels.csv"
    with labels.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == ("image_id", "path", "label", "patient_id", "eye", *MASK_COLUMNS)
        rows = list(reader)
    assert [r["image_id"] for r in rows] == [image_id(i) for i in range(n)]
    for r in rows:
        assert read_rgb(out / r["path"]).shape == (size, size, 3)
        assert r["mask_od"]
        for col in MASK_COLUMNS:
            if r[col]:
                assert not Path(r[col]).is_absolute()
                values = np.unique(np.asarray(Image.open(out / r[col])))
                assert set(values.tolist()) <= {0, 255} and 255 in values
                assert read_mask(out / r[col]).shape == (size, size)
        lesions = [r[f"mask_{t}"] for t in LESION_TYPES if r[f"mask_{t}"]]
        assert (int(r["label"]) == 0) == (not lesions)
    assert len((out / "meta.jsonl").read_text().splitlines()) == n
    return rows


def test_generate_writes_the_layout_and_is_byte_reproducible(tmp_path):
    cfg = SynthConfig(n=6, size=96, seed=2)
    a = generate(cfg, tmp_path / "a", parallel=False)
    generate(cfg, tmp_path / "b", parallel=False)
    _check_layout(tmp_path / "a", a, 6, 96)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    # Independent of n: the first images of a longer set are the same files.
    c = generate(dataclasses.replace(cfg, n=8), tmp_path / "c", parallel=False)
    big = tree_bytes(c.parent)
    for rel, data in tree_bytes(tmp_path / "a").items():
        if rel not in ("labels.csv", "meta.jsonl"):
            assert big[rel] == data, rel


@pytest.mark.timeout(180)
def test_generate_through_ray_gives_the_same_bytes(tmp_path, ray_session):
    cfg = SynthConfig(n=10, size=80, seed=6)
    local = generate(cfg, tmp_path / "local", parallel=False)
    remote = generate(cfg, tmp_path / "ray", parallel=True, num_cpus=0.5)
    _check_layout(tmp_path / "ray", remote, 10, 80)
    assert tree_bytes(local.parent) == tree_bytes(remote.parent)
