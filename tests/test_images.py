"""drray.data.images: every kind of photograph is read the same way, every bad file has a reason."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset_fixtures as fx
from drray.data.images import ImageError, decode_photo, decode_rgb, draft_scale, probe, read_mask, read_photo, read_rgb
from drray.schema import Reason


def _disc(size=48, mode="RGB"):
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2.5) ** 2
    rgb = np.zeros((size, size, 3), np.uint8)
    rgb[inside] = (200, 90, 40)
    return rgb, inside


def _png(arr_or_img, **kw) -> bytes:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_rgb_round_trip():
    rgb, _ = _disc()
    out = decode_rgb(_png(rgb))
    assert out.dtype == np.uint8 and out.shape == (48, 48, 3)
    assert np.array_equal(out, rgb)


def test_grayscale_is_replicated():
    rgb, inside = _disc()
    out = decode_rgb(_png(Image.fromarray(rgb).convert("L")))
    assert out.shape == (48, 48, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and out[inside].mean() > out[~inside].mean()


def test_rgba_drops_alpha_on_black():
    rgb, inside = _disc()
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    rgba = np.dstack([np.full_like(rgb, 255), alpha])
    out = decode_rgb(_png(rgba))
    assert out.shape == (48, 48, 3)
    assert out[inside].min() == 255 and out[~inside].max() == 0


def test_16bit_is_scaled_not_clipped():
    _, inside = _disc()
    a = np.where(inside, 40000, 1000).astype(np.uint16)
    out = decode_rgb(_png(Image.fromarray(a)))
    assert out.shape == (48, 48, 3)
    # 40000/65535*255 ~ 155: scaled, not clipped to 255
    assert 140 < out[inside].mean() < 170 and out[~inside].mean() < 10


def test_palette_image():
    rgb, inside = _disc()
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4)
    out = decode_rgb(_png(pal))
    assert out.shape == (48, 48, 3) and out[inside].mean() > out[~inside].mean()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", Reason.EMPTY_FILE),
        (b"this is a text file, not a photograph\n" * 10, Reason.NOT_AN_IMAGE),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(ImageError) as e:
        decode_rgb(data, "x.png")
    assert e.value.reason == reason and "x.png" in e.value.detail


def test_truncated_png_and_jpeg():
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        data = _png(rgb, format=fmt)
        with pytest.raises(ImageError) as e:
            decode_rgb(data[: len(data) // 2], f"t.{fmt}")
        assert e.value.reason in (Reason.TRUNCATED_IMAGE, Reason.CORRUPT_IMAGE)


def test_corrupt_body():
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = bytearray(_png(rgb))
    data[60:400] = b"\x00" * 340  # header intact, compressed stream garbage
    with pytest.raises(ImageError) as e:
        decode_rgb(bytes(data))
    assert e.value.reason in (Reason.CORRUPT_IMAGE, Reason.TRUNCATED_IMAGE)


def test_pixel_limit_refuses_before_decoding():
    rgb, _ = _disc(size=64)
    with pytest.raises(ImageError) as e:
        decode_rgb(_png(rgb), "big.png", max_pixels=1000)
    assert e.value.reason == Reason.IMAGE_TOO_LARGE and "4,096" in e.value.detail


def test_missing_file(tmp_path: Path):
    with pytest.raises(ImageError) as e:
        read_rgb(tmp_path / "nope.jpg")
    assert e.value.reason == Reason.MISSING_FILE


def test_probe_returns_size(tmp_path: Path):
    p = tmp_path / "a.png"
    Image.new("RGB", (30, 20)).save(p)
    assert probe(p) == (30, 20)


def test_read_mask_any_channel_and_resize(tmp_path: Path):
    m = np.zeros((20, 20, 3), np.uint8)
    m[5:8, 5:8, 0] = 255  # lesion drawn in red only, as IDRiD's .tif masks are
    p = tmp_path / "m.png"
    Image.fromarray(m).save(p)
    mask = read_mask(p)
    assert mask.dtype == bool and mask.sum() == 9
    big = read_mask(p, shape=(40, 40))
    assert big.shape == (40, 40) and big.sum() == 36


def test_read_mask_reasons(tmp_path: Path):
    with pytest.raises(ImageError) as e:
        read_mask(tmp_path / "nope.png")
    assert e.value.reason == Reason.MASK_MISSING
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageError) as e:
        read_mask(bad)
    assert e.value.reason == Reason.MASK_UNREADABLE


# ------------------------------------------------------------------ PIL's own limit
def test_huge_png_is_too_large_not_corrupt(tmp_path: Path):
    # 30000x30000: PIL's own bomb check (2 x 89.5 Mpx) fired inside Image.open and made it corrupt_image.
    p = fx.write_huge_png(tmp_path / "huge.png")
    assert p.stat().st_size < 1_000_000  # a real PNG, cheap to write and never decoded here
    for read in (read_rgb, probe, lambda q: read_photo(q, min_side=300)):
        with pytest.raises(ImageError) as e:
            read(p)
        assert e.value.reason == Reason.IMAGE_TOO_LARGE and "30000x30000" in e.value.detail


def test_drrays_limit_decides_not_pils(monkeypatch):
    rgb, _ = _disc(size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL would refuse 4096 px as a bomb
    assert decode_rgb(_png(rgb), "ok.png", max_pixels=10_000).shape == (64, 64, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back after the call
    with pytest.raises(ImageError) as e:
        decode_rgb(_png(rgb), "big.png", max_pixels=4000)
    assert e.value.reason == Reason.IMAGE_TOO_LARGE and Image.MAX_IMAGE_PIXELS == 1000


# ------------------------------------------------------------------ reduced decoding
def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_draft_scale_keeps_the_shorter_side():
    assert draft_scale((1200, 1600), None) == 1
    assert draft_scale((1200, 1600), 300) == 4  # 1/8 is not used for kept pixels
    assert draft_scale((1200, 1600), 300, max_scale=8) == 4 and draft_scale((1200, 1600), 150, max_scale=8) == 8
    assert draft_scale((1200, 1600), 301) == 2 and draft_scale((1200, 1600), 601) == 1


def test_jpeg_decodes_at_dct_scale_and_keeps_its_stored_size():
    data = fx.encode(_noise(1201, 1603))
    p = decode_photo(data, "a.jpg", min_side=300)
    assert p.scale == 4 and p.shape == (1201, 1603) and p.rgb.shape == (301, 401, 3) and p.rgb.dtype == np.uint8
    assert decode_photo(data, "a.jpg", min_side=500).scale == 2
    full = decode_photo(data, "a.jpg")
    assert full.scale == 1 and full.rgb.shape == (1201, 1603, 3)
    assert np.array_equal(full.rgb, decode_rgb(data))
    # The pixel limit judges the stored size, not the reduced one.
    with pytest.raises(ImageError) as e:
        decode_photo(data, "a.jpg", max_pixels=1201 * 1603 - 1, min_side=300)
    assert e.value.reason == Reason.IMAGE_TOO_LARGE


def test_grayscale_jpeg_decodes_reduced_to_rgb():
    data = fx.encode(_noise(800, 800)[..., 0])
    p = decode_photo(data, min_side=200)
    assert p.scale == 4 and p.rgb.shape == (200, 200, 3) and np.array_equal(p.rgb[..., 0], p.rgb[..., 2])


@pytest.mark.parametrize("mode, scale", [("RGB", 4), ("L", 4), ("RGBA", 1), ("P", 1)])
def test_other_formats_are_box_averaged_by_4_only(mode, scale):
    rgb = _noise(1001, 1203)
    data = _png(Image.fromarray(rgb).convert(mode))
    p = decode_photo(data, min_side=200)
    assert (p.scale, p.shape) == (scale, (1001, 1203))
    assert p.rgb.shape == ((251, 301, 3) if scale == 4 else (1001, 1203, 3))
    if mode == "RGB":  # a box average of 4x4 pixels, the last ones partial
        assert abs(int(p.rgb[0, 0, 1]) - rgb[:4, :4, 1].mean()) <= 1
    assert decode_photo(data, min_side=251).scale == 1  # 1/2 did not pay for itself: never used


def test_truncated_jpeg_fails_alike_at_every_scale(tmp_path: Path):
    # probe() decodes JPEGs at 1/8: entropy decoding still reads every scan, so a cut file must
    # fail exactly as a full decode does, wherever it is cut.
    for progressive in (False, True):
        data = fx.encode(_noise(480, 640), progressive=progressive, quality=90)
        for frac in np.linspace(0.05, 0.98, 12):
            cut = data[: int(len(data) * frac)]
            p = tmp_path / "cut.jpg"
            p.write_bytes(cut)
            outcomes = []
            for read in (decode_rgb, lambda d: decode_photo(d, min_side=60).rgb, lambda d: probe(p)):
                try:
                    read(cut)
                    outcomes.append("ok")
                except ImageError as e:
                    outcomes.append(e.reason)
            assert outcomes[0] == Reason.TRUNCATED_IMAGE, (progressive, frac, outcomes)
            assert outcomes == [outcomes[0]] * 3, (progressive, frac, outcomes)


def test_probe_reports_the_stored_size_of_a_jpeg(tmp_path: Path):
    p = tmp_path / "a.jpg"
    p.write_bytes(fx.encode(_noise(300, 500)))
    assert probe(p) == (500, 300)
