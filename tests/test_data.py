"""drray.data.decode and drray.data.dataset: manifest rows become preprocessed images (and aligned lesion masks)
with their geometry, in Ray tasks."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import dataset_fixtures as fx
import drray.data.decode as decode
from drray.config import PreprocessConfig
from drray.data.dataset import build_dataset
from drray.data.decode import decode_batch, decode_record
from drray.data.mask_bits import mask_bits, unpack_mask
from drray.schema import MASK_COLUMNS, MASK_TYPES, Reason

SIZE = 64


def _photo(path: Path, size=96, lesion=(30, 60)):
    yy, xx = np.mgrid[:size, :size]
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2] = (190, 80, 30)
    y, x = lesion
    rgb[y - 2 : y + 3, x - 2 : x + 3] = (60, 10, 10)
    Image.fromarray(rgb).save(path)
    mask = np.zeros((size, size), np.uint8)
    mask[y - 2 : y + 3, x - 2 : x + 3] = 255
    return mask


@pytest.fixture
def manifest(tmp_path: Path) -> pd.DataFrame:
    rows = []
    for i in range(6):
        img = tmp_path / f"im{i}.png"
        mask = _photo(img, lesion=(30 + 4 * i, 60 - 3 * i))
        mp = tmp_path / f"im{i}_he.png"
        Image.fromarray(mask).save(mp)
        row = dict(image_id=f"im{i}", dataset="fixture", path=str(img), label=i % 5, patient_id=f"p{i}",
                   eye="left", split="train" if i < 4 else "val", width=96, height=96)
        row.update({c: None for c in MASK_COLUMNS})
        row["mask_he"] = str(mp)
        rows.append(row)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    bad = dict(rows[0], image_id="broken", path=str(tmp_path / "broken.png"), mask_he=None)
    return pd.DataFrame(rows + [bad])


def test_mask_bits_round_trip():
    rng = np.random.default_rng(0)
    masks = {t: rng.random((8, 8)) > 0.7 for t in MASK_TYPES}
    bits = mask_bits(masks, (8, 8))
    for t in MASK_TYPES:
        assert np.array_equal(unpack_mask(bits, t), masks[t])
    union = masks["ma"] | masks["he"]
    assert np.array_equal(unpack_mask(bits, ("ma", "he")), union)


def test_decode_batch_aligns_masks_and_keeps_bad_rows(manifest: pd.DataFrame):
    cfg = PreprocessConfig(image_size=SIZE)
    batch = {c: manifest[c].to_numpy() for c in manifest.columns}
    out = decode_batch(batch, cfg=cfg, with_masks=True)
    n = len(manifest)
    assert out["image"].shape == (n, SIZE, SIZE, 3) and out["image"].dtype == np.uint8
    assert out["masks"].shape == (n, SIZE, SIZE)
    assert list(out["error_reason"][:-1]) == [""] * (n - 1)
    assert out["error_reason"][-1] == Reason.NOT_AN_IMAGE
    for i in range(n - 1):
        he = unpack_mask(out["masks"][i], "he")
        assert he.any(), "the lesion mask must survive preprocessing"
        # the mask sits on the dark lesion of the preprocessed photograph
        lum = out["image"][i].astype(float).sum(axis=2)
        fundus = lum > 60
        assert lum[he].mean() < lum[fundus & ~he].mean()


def test_a_decoded_batch_carries_each_photographs_geometry_as_its_decode_record_has_it(manifest: pd.DataFrame):
    """One geometry record from decode to every consumer: the batch's columns read back to the record itself."""
    from drray.data.geometry import COLUMNS, UNREADABLE, Geometry

    cfg = PreprocessConfig(image_size=SIZE)
    out = decode_batch({c: manifest[c].to_numpy() for c in manifest.columns}, cfg=cfg)
    assert set(COLUMNS) <= set(out)
    for i, path in enumerate(manifest["path"]):
        record = decode_record(path, cfg).geometry
        from_batch = Geometry.from_columns(out, i)
        if i == len(manifest) - 1:  # the broken file: no box, no field
            assert record == from_batch == UNREADABLE and from_batch.field_mask(SIZE) is None
            continue
        assert record.box == from_batch.box and record.orig_shape == from_batch.orig_shape == (96, 96)
        assert from_batch.quality_ok and np.array_equal(record.field_mask(SIZE), from_batch.field_mask(SIZE))
        assert Geometry.from_columns(record.columns()) == record


@pytest.mark.timeout(120)
def test_build_dataset_streams_rows(ray_session, manifest: pd.DataFrame):
    cfg = PreprocessConfig(image_size=SIZE)
    ds = build_dataset(manifest, cfg, split="train", with_masks=True, num_cpus=0.5, batch_size=2)
    rows = ds.take_all()
    assert sorted(r["image_id"] for r in rows) == ["broken", "im0", "im1", "im2", "im3"]
    ok = [r for r in rows if r["error_reason"] == ""]
    assert len(ok) == 4 and all(r["image"].shape == (SIZE, SIZE, 3) for r in ok)
    assert {int(r["label"]) for r in ok} == {0, 1, 2, 3}


def test_build_dataset_empty_split_is_clear(manifest: pd.DataFrame):
    with pytest.raises(ValueError, match="no rows in manifest"):
        build_dataset(manifest, PreprocessConfig(image_size=SIZE), split="test")


@pytest.fixture
def scales_used(monkeypatch) -> list[int]:
    """The scale of every decode `decode_record` makes, in order."""
    used: list[int] = []
    real = decode.decode_photo

    def spy(*args, **kwargs):
        photo = real(*args, **kwargs)
        used.append(photo.scale)
        return photo

    monkeypatch.setattr(decode, "decode_photo", spy)
    return used


def _box(d) -> tuple[int, int, int]:
    return d.geometry.box_y0, d.geometry.box_x0, d.geometry.box_side


def test_reduced_jpeg_keeps_masks_aligned(tmp_path: Path, scales_used):
    img = fx.large_fundus(3888, 2592)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(mask, (1500, 1700), 40, 255, -1)  # a haemorrhage, drawn dark into the photograph
    img[mask > 0] = (45, 8, 6)
    photo, mask_path = tmp_path / "eye.jpg", tmp_path / "eye_he.png"
    photo.write_bytes(fx.encode(img))
    Image.fromarray(mask).save(mask_path)  # masks stay PNGs at full resolution
    cfg = PreprocessConfig(image_size=256)
    got = decode_record(str(photo), cfg, {"he": str(mask_path)})
    ref = decode_record(str(photo), cfg, {"he": str(mask_path)}, full_resolution=True)
    assert scales_used == [4, 1] and got.error_reason == ""
    for d in (got, ref):  # the original size, whatever the decode
        assert d.geometry.orig_shape == (2592, 3888)
    assert max(abs(a - b) for a, b in zip(_box(got), _box(ref))) <= 1
    he, he_ref = unpack_mask(got.masks, "he"), unpack_mask(ref.masks, "he")
    assert (he & he_ref).sum() / (he | he_ref).sum() >= 0.9
    lum = got.image.astype(float).sum(axis=2)
    assert lum[he].mean() < 0.5 * lum[(lum > 60) & ~he].mean()  # the mask lies on the dark lesion
    assert np.abs(got.image.astype(float) - ref.image).mean() <= 1.0


def test_small_fundus_is_decoded_again_finer(tmp_path: Path, scales_used):
    # A 1200-px field in a 4000x3000 frame: 1/4 leaves its crop 300 px for a 384-px network,
    # 1/2 gives it 600 (at least 1.25 x 384, as the first guess meant to).
    photo = tmp_path / "small.jpg"
    photo.write_bytes(fx.encode(fx.large_fundus(4000, 3000, disc=1200)))
    cfg = PreprocessConfig(image_size=384)
    got = decode_record(str(photo), cfg)
    ref = decode_record(str(photo), cfg, full_resolution=True)
    assert scales_used == [4, 2, 1]
    assert got.geometry.box_side / 2 >= 1.25 * 384 and got.geometry.quality_ok
    assert max(abs(a - b) for a, b in zip(_box(got), _box(ref))) <= 1
    assert np.abs(got.image.astype(float) - ref.image).mean() <= 1.0
