"""drray.data.images: every kind of photograph is read the same way, every bad file has a reason."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drray.data.images import ImageError, decode_rgb, probe, read_mask, read_rgb
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
