"""Fundus preprocessing: find the circular field of view, crop it to a square, resize, normalise.

One set of pure numpy/OpenCV functions used by training, batch explanation and serving, so a
photograph becomes the same network input everywhere. Coordinates follow OpenCV's convention:
pixel (i, j) has its centre at y=i, x=j and covers [i-0.5, i+0.5] x [j-0.5, j+0.5].

The field of view is found on a copy shrunk to 256-511 px: threshold the brightest channel
against the dark surround, keep the largest component, and fit a circle by least squares to the
component's boundary points that are not on the image border or on a straight edge. That rule
is what makes the fit robust to fields cut off by the frame (APTOS crops the top and bottom of
the disc), also when such an image was later padded back to a square, and to discs that are
off-centre; a robust refit drops outliers such as the notch some cameras print on the rim. Images with no dark surround or no round bright region (all-black, uniform, a
full-frame crop) get `found=False` and fall back to a centre square crop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from drray.config import PreprocessConfig

logger = logging.getLogger(__name__)

WORK_SIDE = 256
"""The circle is searched on a copy shrunk by an integer factor to a longer side of 256-511 px."""
_LO_PCT, _HI_PCT = 1.0, 99.0
_MIN_CONTRAST = 12.0  # grey levels between surround and fundus below which nothing is "found"
_THRESH_FRAC = 0.1  # share of the surround-to-bright range: low, so dim vignetted rims still count
_MIN_STEP = 4.0  # grey levels above the surround, so JPEG noise in a black surround stays out
_MIN_AREA_FRAC = 0.05  # a field of view smaller than this share of the frame is not a fundus
# The fitted circle must explain the bright region. Fundus photographs score >= 0.997 inside;
# noise, triangles and ellipses < 0.9. Coverage may be low where a cut-off field was letterboxed.
_MIN_INSIDE = 0.95
_MIN_COVERED = 0.6
_MIN_POINTS = 12
_STRAIGHT_FRAC = 0.25  # share of rows/columns ending on one line that marks a straight cut


@dataclass(frozen=True)
class FundusCircle:
    """Field of view, in pixels of the source image.

    When `found` is False this is the circle inscribed in the centre square, so downstream
    geometry (crop, rim mask) still works.
    """

    cx: float
    cy: float
    r: float
    found: bool


@dataclass(frozen=True)
class CropBox:
    """Square in source coordinates (top-left pixel and side); may extend past the image."""

    y0: int
    x0: int
    side: int


@dataclass(frozen=True)
class Prepared:
    """A preprocessed photograph and the geometry that produced it."""

    image: np.ndarray
    """(S, S, 3) uint8 RGB."""
    box: CropBox
    circle: FundusCircle
    """The field of view in source pixels (see `circle_in_box` for prepared pixels)."""
    quality_ok: bool
    """False when no fundus was found: the image is a centre crop and predictions on it are suspect."""


def _check_rgb(img: np.ndarray, what: str = "image") -> None:
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"{what} must be an (H, W, 3) uint8 RGB array, got shape {img.shape} dtype {img.dtype}; "
            "read files with drray.data.images.read_rgb, which converts grayscale, RGBA and 16-bit images"
        )
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {img.shape}")


def _centre_circle(h: int, w: int) -> FundusCircle:
    return FundusCircle(cx=(w - 1) / 2.0, cy=(h - 1) / 2.0, r=min(h, w) / 2.0, found=False)


def _fit_circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kasa) least-squares circle through points; centred first for conditioning."""
    mx, my = x.mean(), y.mean()
    u, v = x - mx, y - my
    a = np.stack([u, v, np.ones_like(u)], axis=1)
    sol, *_ = np.linalg.lstsq(a, u * u + v * v, rcond=None)
    cu, cv = sol[0] / 2.0, sol[1] / 2.0
    r2 = sol[2] + cu * cu + cv * cv
    return float(cu + mx), float(cv + my), float(np.sqrt(max(r2, 0.0)))


def _off_straight_cut(ends: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Drop ends that line up on one straight edge: a field cut off and then padded (letterboxed).

    The flat top of a true circle spans ~2*sqrt(2r) lines (12% of them at r=128); a cut spans far more.
    """
    if keep.sum() == 0:
        return keep
    values, counts = np.unique(ends[keep], return_counts=True)
    mode = values[counts.argmax()]
    if counts.max() + counts[np.abs(values - mode) == 1].sum() > _STRAIGHT_FRAC * ends.size:
        keep = keep & (np.abs(ends - mode) > 1)
    return keep


def _boundary_points(fov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left/right ends of each row and top/bottom ends of each column, where the disc itself ends.

    Ends on the image border or on a straight edge are where the frame cut the field, so they
    are left out. Points are on pixel edges (first index - 0.5, last index + 0.5).
    """
    h, w = fov.shape
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for m, n, transpose in ((fov, w, False), (fov.T, h, True)):
        rows = np.flatnonzero(m.any(axis=1))
        first = m[rows].argmax(axis=1)
        last = n - 1 - m[rows, ::-1].argmax(axis=1)
        for ends, edge, keep in ((first, -0.5, first > 0), (last, 0.5, last < n - 1)):
            keep = _off_straight_cut(ends, keep)
            along, across = ends[keep] + edge, rows[keep].astype(np.float64)
            xs.append(across if transpose else along)
            ys.append(along if transpose else across)
    return np.concatenate(xs), np.concatenate(ys)


def _largest_filled_component(mask: np.ndarray) -> np.ndarray:
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = np.zeros_like(mask)
    if n <= 1:
        return out
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    # Fill holes (a dark macula or vessels under the threshold in a dim photo) via the outer contour.
    contours, _ = cv2.findContours((labels == best).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out


def _field_mask(rgb: np.ndarray) -> np.ndarray | None:
    """(H, W) uint8 0/1: the largest bright region, holes filled; None when there is no contrast."""
    # The brightest channel (red in a fundus) keeps the most signal in under-exposed photographs.
    grey = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    lo, hi = np.percentile(grey, (_LO_PCT, _HI_PCT))
    if hi - lo < _MIN_CONTRAST:
        logger.debug("no fundus: contrast %.1f grey levels (surround %.0f, bright %.0f)", hi - lo, lo, hi)
        return None
    thresh = lo + max(_THRESH_FRAC * (hi - lo), _MIN_STEP)
    return _largest_filled_component((grey > thresh).astype(np.uint8))


def _shrink(img: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """Shrink by an integer factor k to a longer side of WORK_SIDE..2*WORK_SIDE-1 px.

    Returns the copy, k, and the source coordinates (oy, ox) of its pixel (0, 0)'s centre: small
    pixel (y, x) sits at source (y * k + oy, x * k + ox). Large photographs are block-averaged
    over every s-th row only: OpenCV reads a row-strided view without copying, which makes an
    APTOS-sized photograph 4x cheaper, and the circle's edge is no sharper than a few rows anyway.
    """
    h, w = img.shape[:2]
    k = max(1, min(max(h, w) // WORK_SIDE, min(h, w) // 8))
    if k == 1:
        return img, 1, 0.0, 0.0
    s, a = (k // 2, 2) if k >= 4 else (1, k)  # row stride, then rows averaged per block
    k = s * a
    o = s // 2  # sample rows near the middle of each stride
    sh, sw = (h - o) // k, w // k
    # The < k trailing rows and columns left out only look like a frame edge, which the fit ignores.
    small = cv2.resize(img[o : o + sh * k : s, : sw * k], (sw, sh), interpolation=cv2.INTER_AREA)
    return small, k, o + (a - 1) * s / 2.0, (k - 1) / 2.0


def find_fundus(img: np.ndarray) -> FundusCircle:
    """Locate the circular field of view of a fundus photograph (H, W, 3) uint8 RGB."""
    _check_rgb(img)
    h, w = img.shape[:2]
    if min(h, w) < 8:
        logger.debug("no fundus: image %dx%d is too small", w, h)
        return _centre_circle(h, w)
    small, k, oy, ox = _shrink(img)
    sh, sw = small.shape[:2]
    fov = _field_mask(small)
    if fov is None:
        return _centre_circle(h, w)
    area = int(fov.sum())
    if area < _MIN_AREA_FRAC * sh * sw:
        logger.debug("no fundus: largest bright region is %.1f%% of the frame", 100.0 * area / (sh * sw))
        return _centre_circle(h, w)
    px, py = _boundary_points(fov.astype(bool))
    if px.size < _MIN_POINTS:
        logger.debug("no fundus: bright region has no edge inside the frame (full-frame image?)")
        return _centre_circle(h, w)
    px, py = px * k + ox, py * k + oy  # to source pixels before fitting
    keep = np.ones(px.size, dtype=bool)
    for _ in range(3):
        cx, cy, r = _fit_circle(px[keep], py[keep])
        resid = np.abs(np.hypot(px - cx, py - cy) - r)
        mad = np.median(resid[keep])
        new_keep = resid <= max(float(k), 3.0 * 1.4826 * mad)
        if new_keep.sum() < _MIN_POINTS or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if not (0 < r <= max(h, w)):
        logger.debug("no fundus: fitted radius %.1f px is implausible for a %dx%d image", r, w, h)
        return _centre_circle(h, w)
    yy, xx = np.ogrid[:sh, :sw]
    disc = np.hypot(xx * k + ox - cx, yy * k + oy - cy) <= r
    inter = np.count_nonzero(disc & fov.astype(bool))
    inside, covered = inter / max(1, area), inter / max(1, np.count_nonzero(disc))
    logger.debug("fundus fit: share of bright region in circle %.3f, share of circle covered %.3f", inside, covered)
    if inside < _MIN_INSIDE or covered < _MIN_COVERED:
        logger.debug("no fundus: bright region is not round")
        return _centre_circle(h, w)
    return FundusCircle(cx=cx, cy=cy, r=r, found=True)


def centre_box(shape: tuple[int, int], pad: bool = False) -> CropBox:
    """The centred square of an (H, W) image: inside it (`pad=False`) or padding all of it (`pad=True`)."""
    h, w = int(shape[0]), int(shape[1])
    side = max(h, w) if pad else min(h, w)
    return CropBox(y0=(h - side) // 2, x0=(w - side) // 2, side=side)


def fundus_box(circle: FundusCircle, shape: tuple[int, int], margin: float = 0.0) -> CropBox:
    """Square around the field of view (side 2r(1+margin)); the centre square crop when not found."""
    if not circle.found:
        return centre_box(shape, pad=False)
    side = max(1, round(2.0 * circle.r * (1.0 + margin)))
    # The square spans [c - side/2, c + side/2] in continuous coordinates; pixel k starts at k - 0.5.
    return CropBox(y0=round(circle.cy - side / 2 + 0.5), x0=round(circle.cx - side / 2 + 0.5), side=side)


def crop_square(arr: np.ndarray, box: CropBox, fill=0) -> np.ndarray:
    """Cut `box` out of an (H, W) or (H, W, C) array of any dtype; parts outside the image get `fill`."""
    if arr.ndim not in (2, 3):
        raise ValueError(f"crop_square needs an (H, W) or (H, W, C) array, got shape {arr.shape}")
    h, w = arr.shape[:2]
    out = np.full((box.side, box.side) + arr.shape[2:], fill, dtype=arr.dtype)
    sy0, sx0 = max(box.y0, 0), max(box.x0, 0)
    sy1, sx1 = min(box.y0 + box.side, h), min(box.x0 + box.side, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - box.y0:sy1 - box.y0, sx0 - box.x0:sx1 - box.x0] = arr[sy0:sy1, sx0:sx1]
    return out


def circle_in_box(circle: FundusCircle, box: CropBox, size: int) -> FundusCircle:
    """The circle in pixels of the prepared (size, size) image cut from `box`."""
    s = size / box.side
    return FundusCircle(
        cx=(circle.cx - box.x0 + 0.5) * s - 0.5,
        cy=(circle.cy - box.y0 + 0.5) * s - 0.5,
        r=circle.r * s,
        found=circle.found,
    )


def ben_graham(
    img: np.ndarray,
    sigma: float,
    circle: FundusCircle | None = None,
    rim: float = 0.9,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Ben Graham's colour normalisation: 4*img - 4*GaussianBlur(img, sigma) + 128, rim blanked to 0.

    It removes the slow variation of illumination and pigmentation between eyes and cameras and
    keeps local contrast (vessels, lesions). Pixels farther than `rim` * r from the centre are set
    to 0, which hides the bright ring the subtraction leaves at the field's edge.
    sigma: Gaussian sigma in pixels of `img`.
    circle: field of view in pixels of `img`; None means the circle inscribed in the image.
    valid: optional (H, W) bool of real fundus pixels. The local average is then taken over valid
        pixels only (normalised convolution) and the rest is set to 0, so padding past a cut-off
        field does not leave dark-and-bright bands along the cut.
    """
    _check_rgb(img)
    if not sigma > 0:
        raise ValueError(f"ben_graham sigma must be > 0 pixels, got {sigma}")
    h, w = img.shape[:2]
    if valid is None:
        blur = cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma))
        out = cv2.addWeighted(img, 4.0, blur, -4.0, 128.0)  # saturates to 0..255, as in the original
    else:
        if valid.shape != (h, w):
            raise ValueError(f"ben_graham valid mask has shape {valid.shape}, image is {(h, w)}")
        wgt = valid.astype(np.float32)
        num = cv2.GaussianBlur(img.astype(np.float32) * wgt[..., None], (0, 0), sigmaX=float(sigma))
        den = cv2.GaussianBlur(wgt, (0, 0), sigmaX=float(sigma))
        blur = num / np.maximum(den, 1e-6)[..., None]
        out = np.clip(4.0 * (img - blur) + 128.0 + 0.5, 0, 255).astype(np.uint8)
        out[~valid] = 0
    c = circle if circle is not None else _centre_circle(h, w)
    yy, xx = np.ogrid[:h, :w]
    outside = (xx - c.cx) ** 2 + (yy - c.cy) ** 2 > (rim * c.r) ** 2
    out[outside] = 0
    return out


def _footprint(box: CropBox, shape: tuple[int, int], size: int) -> np.ndarray:
    """(size, size) bool: prepared pixels whose centre falls inside the source image (not padding)."""
    s = box.side / size
    centres = box.y0 - 0.5 + (np.arange(size) + 0.5) * s  # source coordinate of each output centre
    in_y = (centres >= -0.5) & (centres < shape[0] - 0.5)
    centres = box.x0 - 0.5 + (np.arange(size) + 0.5) * s
    in_x = (centres >= -0.5) & (centres < shape[1] - 0.5)
    return in_y[:, None] & in_x[None, :]


def _resize(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size:
        return arr
    interp = cv2.INTER_AREA if arr.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(arr, (size, size), interpolation=interp)


def prepare(img: np.ndarray, cfg: PreprocessConfig) -> Prepared:
    """Photograph -> network input: crop to the fundus (if cfg.crop), resize, Ben Graham (if set).

    Without cfg.crop the box is the centred square padding the whole image, so `prepare_mask` and
    `box_to_image_coords` apply either way.
    """
    _check_rgb(img)
    circle = find_fundus(img)
    box = fundus_box(circle, img.shape[:2]) if cfg.crop else centre_box(img.shape[:2], pad=True)
    out = _resize(crop_square(img, box), cfg.image_size)
    if cfg.ben_graham:
        sigma = cfg.ben_graham_sigma_frac * cfg.image_size
        size = cfg.image_size
        valid = _footprint(box, img.shape[:2], size)
        rim_circle = None
        if circle.found:
            # The local average is taken over the field only: the dark surround, and the black
            # bands of a cut-off field that was letterboxed, would leave bright rings and bands.
            rim_circle = circle_in_box(circle, box, size)
            yy, xx = np.ogrid[:size, :size]
            valid &= (xx - rim_circle.cx) ** 2 + (yy - rim_circle.cy) ** 2 <= rim_circle.r ** 2
            field = _field_mask(out)
            if field is not None:
                # Eroded by a pixel: edge pixels that resizing mixed with the black are too dark.
                valid &= cv2.erode(field, np.ones((3, 3), np.uint8)).astype(bool)
        out = ben_graham(out, sigma, rim_circle, valid=valid)
    return Prepared(image=np.ascontiguousarray(out), box=box, circle=circle, quality_ok=circle.found)


def prepare_mask(mask: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """A lesion mask (H, W), bool or integer (non-zero = lesion) -> (size, size) bool aligned with `prepare`.

    Shrinking keeps every lesion: the mask is area-averaged in float and thresholded at > 0, so an
    output pixel is set when any source lesion pixel overlaps its footprint (max-pooling). A 1-px
    microaneurysm survives any reduction; masks grow by at most one output pixel at their edges.
    Enlarging uses centre-aligned nearest neighbour (INTER_NEAREST_EXACT), matching the
    half-pixel convention of the image's INTER_LINEAR.
    """
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        raise ValueError(f"mask must be an (H, W) array, got shape {getattr(mask, 'shape', type(mask).__name__)}")
    if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
        raise ValueError(f"mask must be bool or integer (non-zero = lesion), got dtype {mask.dtype}")
    sq = crop_square(mask != 0, box)
    if box.side == size:
        return sq
    if box.side > size:
        return cv2.resize(sq.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) > 0
    return cv2.resize(sq.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST_EXACT) > 0


def box_to_image_coords(y: float, x: float, box: CropBox, size: int, shape: tuple[int, int]) -> tuple[float, float]:
    """Point (y, x) in the prepared (size, size) image -> (y, x) as 0-1 fractions of the original image.

    Fractions measure from the image's top-left edge (0) to its bottom-right edge (1); points in the
    padding outside the image are clipped to [0, 1].
    """
    s = box.side / size
    fy = (box.y0 + (y + 0.5) * s) / shape[0]
    fx = (box.x0 + (x + 0.5) * s) / shape[1]
    return float(np.clip(fy, 0.0, 1.0)), float(np.clip(fx, 0.0, 1.0))


def image_to_box_coords(fy: float, fx: float, box: CropBox, size: int, shape: tuple[int, int]) -> tuple[float, float]:
    """Inverse of `box_to_image_coords`: 0-1 fractions of the original image -> (y, x) prepared pixels."""
    s = size / box.side
    return (fy * shape[0] - box.y0) * s - 0.5, (fx * shape[1] - box.x0) * s - 0.5
