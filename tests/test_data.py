"""drray.data.dataset: manifest rows become preprocessed images (and aligned lesion masks) in Ray tasks."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from drray.config import PreprocessConfig
from drray.data.dataset import build_dataset, decode_batch, mask_bits, unpack_mask
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
