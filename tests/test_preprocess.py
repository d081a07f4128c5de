"""Fundus circle finding, crop/resize geometry, mask alignment and Ben Graham normalisation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

import dataset_fixtures as fx
from drray.config import PreprocessConfig
from drray.data.images import decode_photo
from drray.data.preprocess import (
    CropBox,
    FundusCircle,
    ben_graham,
    box_to_image_coords,
    centre_box,
    circle_in_box,
    crop_resized,
    crop_square,
    decode_side,
    enough_resolution,
    find_fundus,
    fundus_box,
    image_to_box_coords,
    prepare,
    prepare_mask,
)


@pytest.fixture(scope="module")
def retina():
    """scikit-image's fundus photograph (ships with the package, 1411x1411) and its field of view.

    The reference is measured from the pixels: everything brighter than a small threshold is the
    field; its centroid is the centre and sqrt(area / pi) the radius.
    """
    img = skimage.data.retina()
    field = img.astype(np.float32).mean(axis=2) > 15
    ys, xs = np.nonzero(field)
    return img, (float(ys.mean()), float(xs.mean()), float(np.sqrt(field.sum() / np.pi)))


def assert_circle_near(c: FundusCircle, cy: float, cx: float, r: float, tol: float, centre_tol: float | None = None) -> None:
    assert c.found
    centre_tol = tol if centre_tol is None else centre_tol
    msg = f"found {c}, expected cy={cy:.2f} cx={cx:.2f} r={r:.2f}"
    assert max(abs(c.cy - cy), abs(c.cx - cx)) <= centre_tol, f"{msg}: centre off by more than {centre_tol:.2f} px"
    assert abs(c.r - r) <= tol, f"{msg}: radius off by more than {tol:.2f} px"


def synth_fundus(h, w, cy, cx, r, seed=0, background=0):
    """A textured red disc of known geometry (vignetting, noise, dark vessel lines) on a dark surround."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    d = np.hypot(xx - cx, yy - cy) / r
    shade = np.clip(1.0 - 0.45 * d**2, 0, 1)[..., None]
    img = np.array([200, 85, 50], np.float32) * shade + rng.normal(0, 6, (h, w, 3))
    for _ in range(12):
        p0 = rng.uniform([0, 0], [w, h]).astype(int)
        p1 = rng.uniform([0, 0], [w, h]).astype(int)
        cv2.line(img, tuple(map(int, p0)), tuple(map(int, p1)), (90, 25, 20), max(1, round(r / 60)))
    img[d > 1] = background + rng.normal(0, 2, (h, w, 3))[d > 1]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_retina_photograph_field_of_view(retina):
    img, (cy, cx, r) = retina
    assert_circle_near(find_fundus(img), cy, cx, r, tol=0.03 * 2 * r)


@pytest.mark.parametrize("variant", ["cut_top_bottom", "off_centre", "dark", "cut_off_centre_dark"])
def test_retina_transformed_still_found(retina, variant):
    img, (cy, cx, r) = retina
    ys = np.nonzero(img.astype(np.float32).mean(axis=2) > 15)[0]
    cut = int(0.15 * (ys.max() - ys.min()))  # 15% of the circle's height off each side, as in APTOS
    top, bottom = ys.min() + cut, ys.max() - cut
    if variant in ("cut_top_bottom", "cut_off_centre_dark"):
        img, cy = img[top:bottom], cy - top
    if variant in ("off_centre", "cut_off_centre_dark"):
        img, cy, cx = np.pad(img, ((40, 300), (700, 60), (0, 0))), cy + 40, cx + 700
    if variant in ("dark", "cut_off_centre_dark"):
        img = (img * 0.3).astype(np.uint8)
    assert_circle_near(find_fundus(img), cy, cx, r, tol=0.03 * 2 * r)


@pytest.mark.parametrize(
    "h, w, cy, cx, r, background",
    [
        (480, 640, 240.0, 320.0, 200.0, 0),  # centred
        (400, 700, 210.5, 480.0, 150.0, 0),  # off-centre
        (500, 600, 250.0, 300.0, 290.0, 0),  # cut off top and bottom
        (2000, 3000, 1000.0, 1500.0, 1200.0, 8),  # big, cut off, noisy dark-grey surround
        (96, 120, 50.0, 58.0, 40.0, 0),  # smaller than the working copy: no downscaling
        (400, 500, 195.0, 250.0, 200.0, 0),  # slivers cut off top and bottom: ends on the border
    ],
)
def test_synthetic_disc_recovered(h, w, cy, cx, r, background):
    c = find_fundus(synth_fundus(h, w, cy, cx, r, background=background))
    # The centre comes from both sides of the disc, so it is sharper than the radius.
    assert_circle_near(c, cy, cx, r, tol=0.02 * r, centre_tol=0.0025 * r)


def test_notch_and_label_on_the_rim_are_ignored():
    # Cameras print a notch on the rim and some archives burn a white label into a corner of the field.
    img = synth_fundus(480, 640, 240.0, 320.0, 200.0)
    cv2.rectangle(img, (450, 65), (495, 110), (180, 80, 50), -1)
    cv2.rectangle(img, (110, 360), (200, 400), (255, 255, 255), -1)
    assert_circle_near(find_fundus(img), 240.0, 320.0, 200.0, tol=0.01 * 200, centre_tol=0.0025 * 200)


@pytest.mark.parametrize(
    "img",
    [
        np.zeros((300, 400, 3), np.uint8),
        np.full((300, 400, 3), 128, np.uint8),
        np.full((50, 50, 3), 255, np.uint8),
        np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8),
        np.zeros((3, 5, 3), np.uint8),
    ],
    ids=["black", "grey", "white", "noise", "tiny"],
)
def test_no_fundus_falls_back_to_centre_crop(img):
    c = find_fundus(img)
    assert not c.found
    p = prepare(img, PreprocessConfig(image_size=32, ben_graham=True))
    assert p.image.shape == (32, 32, 3) and p.image.dtype == np.uint8
    assert not p.quality_ok
    assert p.box == centre_box(img.shape[:2], pad=False)


def test_bright_square_is_not_a_fundus():
    img = np.zeros((300, 300, 3), np.uint8)
    img[50:250, 50:250] = (200, 90, 60)
    assert not find_fundus(img).found


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("bg", [True, False])
def test_prepare_shape_and_box(retina, crop, bg):
    img, _ = retina
    p = prepare(img, PreprocessConfig(image_size=64, crop=crop, ben_graham=bg))
    assert p.image.shape == (64, 64, 3) and p.image.dtype == np.uint8
    assert p.quality_ok and p.circle.found
    if crop:
        assert abs(p.box.side - 2 * p.circle.r) <= 1
    else:
        assert p.box == CropBox(y0=0, x0=0, side=1411)


def test_fundus_box_and_crop_square_padding():
    c = FundusCircle(cx=9.5, cy=4.5, r=10.0, found=True)
    box = fundus_box(c, (10, 20))
    assert box == CropBox(y0=-5, x0=0, side=20)
    img = np.full((10, 20, 3), 7, np.uint8)
    sq = crop_square(img, box)
    assert sq.shape == (20, 20, 3)
    assert (sq[:5] == 0).all() and (sq[5:15] == 7).all() and (sq[15:] == 0).all()
    mask = np.ones((10, 20), bool)
    msq = crop_square(mask, box)
    assert msq.dtype == bool and msq.sum() == 200 and msq[5:15].all()
    assert fundus_box(FundusCircle(0, 0, 1, found=False), (10, 20)) == CropBox(y0=0, x0=5, side=10)
    assert centre_box((10, 20), pad=True) == CropBox(y0=-5, x0=0, side=20)
    # Centre of the box -> centre of the prepared image, whatever the scale.
    for size in (7, 20, 64):
        m = circle_in_box(c, box, size)
        assert (m.cy, m.cx, m.r) == pytest.approx(((size - 1) / 2, (size - 1) / 2, 10.0 * size / 20))


def _marker_image(h, w, cy, cx, r, py, px, half):
    img = synth_fundus(h, w, cy, cx, r, seed=3)
    img[py - half:py + half + 1, px - half:px + half + 1] = (0, 0, 255)
    mask = np.zeros((h, w), bool)
    mask[py - half:py + half + 1, px - half:px + half + 1] = True
    return img, mask


def _centroid(m):
    ys, xs = np.nonzero(m)
    return ys.mean(), xs.mean()


@pytest.mark.parametrize(
    "h, w, r, size, crop",
    [
        (900, 1200, 520.0, 96, True),  # shrink, field cut off top and bottom
        (900, 1200, 520.0, 96, False),  # shrink, whole image padded
        (120, 160, 55.0, 224, True),  # enlarge
    ],
)
def test_mask_and_coords_follow_the_image(h, w, r, size, crop):
    cy, cx = h / 2 - 0.5, w / 2 + 30
    py, px = int(cy + 0.4 * r), int(cx - 0.5 * r)
    img, mask = _marker_image(h, w, cy, cx, r, py, px, half=max(1, round(h / 100)))
    p = prepare(img, PreprocessConfig(image_size=size, crop=crop))
    assert p.circle.found
    blue = p.image[..., 2].astype(int) - p.image[..., 0]
    landed = _centroid(blue > 0.5 * blue.max())
    pm = prepare_mask(mask, p.box, size)
    assert pm.shape == (size, size) and pm.dtype == bool
    my, mx = _centroid(pm)
    # Within half a pixel: shrinking max-pools, so the mask may grow by a pixel on one side.
    assert abs(my - landed[0]) <= 0.5 and abs(mx - landed[1]) <= 0.5
    fy, fx = box_to_image_coords(landed[0], landed[1], p.box, size, img.shape[:2])
    px_frac = p.box.side / size  # one prepared pixel, in source pixels
    tol = 0.3 * px_frac
    assert abs(fy * h - (py + 0.5)) <= tol and abs(fx * w - (px + 0.5)) <= tol
    back = image_to_box_coords(fy, fx, p.box, size, img.shape[:2])
    assert np.allclose(back, landed, atol=1e-6)


def test_single_pixel_lesions_survive_shrinking():
    h = w = 1411
    box = CropBox(y0=-30, x0=7, side=1396)
    size = 224  # 6.23x reduction, not an integer: footprints straddle source pixels
    mask = np.zeros((h, w), np.uint8)
    pts = [(y, x) for y in range(11, h, 53) for x in range(5, w, 47) if -30 <= y < 1366 and 7 <= x < 1403]
    for y, x in pts:
        mask[y, x] = 1
    pm = prepare_mask(mask, box, size)
    n, labels = cv2.connectedComponents(pm.astype(np.uint8), connectivity=8)
    assert n - 1 == len(pts)  # every lesion pixel present, none merged
    for y, x in pts[::17]:
        ty, tx = image_to_box_coords((y + 0.5) / h, (x + 0.5) / w, box, size, (h, w))
        assert pm[int(round(ty)) - 1:int(round(ty)) + 2, int(round(tx)) - 1:int(round(tx)) + 2].any()


def test_enlarged_mask_takes_the_source_pixel_under_each_centre():
    rng = np.random.default_rng(1)
    mask = rng.random((15, 17)) < 0.3
    box = CropBox(y0=-2, x0=3, side=11)
    size = 24  # 11 -> 24: no output centre falls on a source pixel edge, so "nearest" is unambiguous
    src = box.y0 + (np.arange(size) + 0.5) * box.side / size - 0.5
    iy = np.floor(src + 0.5).astype(int)
    ix = np.floor(box.x0 - box.y0 + src + 0.5).astype(int)
    padded = np.zeros((40, 40), bool)
    padded[5:20, 5:22] = mask  # offset 5 so negative indices land in the zero padding
    expected = padded[iy[:, None] + 5, ix[None, :] + 5]
    assert np.array_equal(prepare_mask(mask, box, size), expected)


def test_ben_graham_on_retina(retina):
    img, _ = retina
    size = 192
    p = prepare(img, PreprocessConfig(image_size=size, ben_graham=True))
    c = circle_in_box(p.circle, p.box, size)
    yy, xx = np.ogrid[:size, :size]
    d = np.hypot(xx - c.cx, yy - c.cy)
    assert (p.image[d > 0.9 * c.r] == 0).all()
    inside = p.image[d < 0.85 * c.r].astype(np.float64)
    assert np.all(np.abs(inside.mean(axis=0) - 128) < 12), inside.mean(axis=0)
    # The colour cast is gone: channels that differ by >100 grey levels in the photo end up together.
    assert np.ptp(inside.mean(axis=0)) < 15


@pytest.mark.parametrize("cut", [None, "frame", "letterbox"])
@pytest.mark.parametrize("ben", [False, True], ids=["colour", "ben_graham"])
def test_field_of_view_is_the_fundus_the_network_sees(retina, ben, cut):
    """Maps are scored inside `Geometry.field_mask`: with Ben Graham it stops where the image turns black (the
    blanked ring is a fifth of the disc's area), and a fundus cut off above and below stops at the
    cut, whether the frame cut it (padding past the photograph) or black bands were added back to
    make it square; none of that black is a place to point at or part of the chance rate."""
    from drray.data.geometry import Geometry

    img, (cy, _, r) = retina
    if cut:  # cut by the frame above and below, as in APTOS
        img = img[int(cy - 0.7 * r):int(cy + 0.7 * r)]
    if cut == "letterbox":  # ... and padded back to a square by whoever shared the archive
        img = np.pad(img, ((220, 220), (0, 0), (0, 0)))
    size = 192
    p = prepare(img, PreprocessConfig(image_size=size, ben_graham=ben))
    c = circle_in_box(p.circle, p.box, size)
    geometry = Geometry.of(p, img.shape[:2])
    assert geometry.fov_r == pytest.approx((0.9 if ben else 1.0) * c.r)
    field = geometry.field_mask(size)
    yy, xx = np.ogrid[:size, :size]
    disc = np.hypot(xx - c.cx, yy - c.cy) <= (0.9 if ben else 1.0) * c.r
    shows = p.image.max(axis=2) > 0
    assert not (field & ~disc).any()
    if cut:  # the disc runs past the frame; the field stops at it
        assert (disc & ~field).sum() > 0.1 * disc.sum()
    else:
        assert (disc & ~field).sum() < 0.01 * disc.sum()
    if ben:
        assert not shows[~field].any()  # nothing outside the field shows fundus ...
    assert shows[field].mean() > 0.98  # ... and the field is fundus (but the edge pixel Ben Graham drops along a cut)


def test_no_fundus_no_field():
    from drray.data.geometry import Geometry

    img = np.full((64, 64, 3), 90, np.uint8)  # flat grey: no fundus circle to find
    p = prepare(img, PreprocessConfig(image_size=32))
    assert not p.quality_ok
    assert Geometry.of(p, img.shape[:2]).field_mask(32) is None


@pytest.mark.parametrize("letterbox", [False, True])
def test_ben_graham_leaves_no_band_along_a_cut(retina, letterbox):
    img, (cy, _, r) = retina
    img = img[int(cy - 0.7 * r):int(cy + 0.7 * r)]  # cut by the frame, as in APTOS
    if letterbox:  # ... and then padded back to a square by whoever shared the archive
        img = np.pad(img, ((220, 220), (0, 0), (0, 0)))
    size = 192
    p = prepare(img, PreprocessConfig(image_size=size, ben_graham=True))
    c = circle_in_box(p.circle, p.box, size)
    rows = np.flatnonzero(p.image.max(axis=(1, 2)) > 0)
    top, bottom = rows.min(), rows.max()
    assert (p.image[:top] == 0).all() and (p.image[bottom + 1:] == 0).all()
    assert bottom - top > 0.6 * 2 * c.r  # the field itself is kept
    cols = slice(int(c.cx - 0.4 * c.r), int(c.cx + 0.4 * c.r))
    # Averaging the black past the cut into the local mean would leave a band at ~180 here.
    for band in (p.image[top:top + 3, cols], p.image[bottom - 2:bottom + 1, cols]):
        assert np.all(np.abs(band.mean(axis=(0, 1)) - 128) < 25), band.mean(axis=(0, 1))


@pytest.mark.parametrize("with_valid", [False, True])
def test_ben_graham_flat_field_is_grey(with_valid):
    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (180, 70, 40)
    valid = np.ones((64, 64), bool) if with_valid else None
    out = ben_graham(img, sigma=3.0, valid=valid)
    yy, xx = np.ogrid[:64, :64]
    d = np.hypot(xx - 31.5, yy - 31.5)
    assert (out[d < 0.85 * 32] == 128).all()
    assert (out[d > 0.9 * 32] == 0).all()


@pytest.mark.parametrize(
    "bad",
    [np.zeros((20, 30), np.uint8), np.zeros((20, 30, 3), np.float32), np.zeros((20, 30, 4), np.uint8)],
    ids=["2d", "float", "rgba"],
)
def test_wrong_shapes_and_dtypes_are_named(bad):
    with pytest.raises(ValueError, match=r"\(20, 30"):
        find_fundus(bad)
    with pytest.raises(ValueError, match=str(bad.dtype)):
        prepare(bad, PreprocessConfig(image_size=32))


def test_bad_mask_is_named():
    box = CropBox(0, 0, 10)
    with pytest.raises(ValueError, match=r"\(10, 10, 3\)"):
        prepare_mask(np.zeros((10, 10, 3), bool), box, 8)
    with pytest.raises(ValueError, match="float"):
        prepare_mask(np.zeros((10, 10), np.float32), box, 8)


# ------------------------------------------------------------ photographs decoded at reduced scale
# Mean absolute difference, in grey levels, allowed between a reduced decode's network input and
# the full-resolution one's. Measured 0.3-0.6 (Ben Graham: 0.8-1.6, it multiplies differences by 4)
# on 3888x2592 and 4000x3000 photographs; the rest of the difference is a 1-px change of the box.
GREY_TOL = 1.0
GREY_TOL_BEN_GRAHAM = 2.0


@pytest.fixture(scope="module")
def camera_jpeg():
    """A 3888x2592 JPEG (a 10-Mpx camera's frame, fundus filling its height) and its full decode."""
    data = fx.encode(fx.large_fundus(3888, 2592))
    return data, decode_photo(data)


def _box_delta(a: CropBox, b: CropBox) -> int:
    return max(abs(a.y0 - b.y0), abs(a.x0 - b.x0), abs(a.side - b.side))


@pytest.mark.parametrize("size, scale", [(224, 4), (384, 4), (512, 4), (560, 2)])
@pytest.mark.parametrize("ben", [False, True], ids=["plain", "ben_graham"])
@pytest.mark.parametrize("crop", [True, False], ids=["crop", "no_crop"])
def test_reduced_decode_matches_full_resolution(camera_jpeg, size, scale, ben, crop):
    data, full = camera_jpeg
    cfg = PreprocessConfig(image_size=size, ben_graham=ben, crop=crop)
    ref = prepare(full.rgb, cfg)
    photo = decode_photo(data, min_side=decode_side(cfg))
    assert photo.scale == scale and photo.shape == full.rgb.shape[:2]
    got = prepare(photo.rgb, cfg, photo.scale, photo.shape)
    # Geometry in original pixels, within a pixel of the full-resolution path.
    assert _box_delta(got.box, ref.box) <= 1, (got.box, ref.box)
    assert got.quality_ok and enough_resolution(got.box, photo.scale, cfg)
    c, r = got.circle, ref.circle
    assert max(abs(c.cx - r.cx), abs(c.cy - r.cy), abs(c.r - r.r)) <= 1.0, (c, r)
    grey = np.abs(got.image.astype(np.float32).mean(axis=2) - ref.image.astype(np.float32).mean(axis=2))
    assert grey.mean() <= (GREY_TOL_BEN_GRAHAM if ben else GREY_TOL), grey.mean()


def test_reduced_crop_covers_the_same_box():
    # On a linear ramp, every correct resampling returns the ramp at each output footprint's centre,
    # so any offset or scale error of the reduced path's geometry shows as a difference.
    h, w, s, size = 1200, 1600, 4, 96
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = 0.37 * xx + 0.21 * yy
    reduced = cv2.resize(img, (w // s, h // s), interpolation=cv2.INTER_AREA)  # exact 4x4 means
    for box in (CropBox(-37, 101, 1250), CropBox(13, -7, 1190), CropBox(0, 0, 1200), CropBox(101, 203, 387)):
        centres = (np.arange(size) + 0.5) * box.side / size - 0.5
        ey, ex = box.y0 + centres, box.x0 + centres
        expected = 0.37 * ex[None, :] + 0.21 * ey[:, None]
        # Footprints well inside the image: the padding's black does not reach them.
        margin = box.side / size + s
        inside = ((ey > margin) & (ey < h - 1 - margin))[:, None] & ((ex > margin) & (ex < w - 1 - margin))[None, :]
        for got in (crop_resized(img, box, size), crop_resized(reduced, box, size, s)):
            assert got.shape == (size, size)
            assert np.abs(got - expected)[inside].max() < 0.01


def test_synthetic_disc_found_alike_at_reduced_scale():
    h, w, cy, cx, r = 2000, 3000, 1010.0, 1480.0, 930.0
    img = synth_fundus(h, w, cy, cx, r)
    full = find_fundus(img)
    for s in (2, 4):
        reduced = cv2.resize(img, (w // s, h // s), interpolation=cv2.INTER_AREA)
        c = find_fundus(reduced, s, (h, w))
        assert max(abs(c.cx - full.cx), abs(c.cy - full.cy), abs(c.r - full.r)) <= 1.0, (s, c, full)
    blank = find_fundus(np.zeros((500, 750, 3), np.uint8), 4, (2000, 3000))
    assert not blank.found and (blank.cy, blank.cx, blank.r) == (999.5, 1499.5, 1000.0)  # original pixels


def test_reduced_geometry_needs_the_original_shape():
    img = np.zeros((250, 300, 3), np.uint8)
    cfg = PreprocessConfig(image_size=32)
    with pytest.raises(ValueError, match="needs the original shape"):
        prepare(img, cfg, 4)
    with pytest.raises(ValueError, match=r"not a 1/4 decode of a 1000x1000 .* expected \(250, 250\)"):
        prepare(img, cfg, 4, (1000, 1000))
    with pytest.raises(ValueError, match="scale must be one of"):
        prepare(img, cfg, 3, (750, 900))
    assert prepare(img, cfg, 4, (1000, 1198)).box == CropBox(y0=0, x0=99, side=1000)  # a centre crop
