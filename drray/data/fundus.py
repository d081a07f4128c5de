"""Finding the circular field of view of a fundus photograph (`find_fundus`): pure numpy/OpenCV.

The field of view is found on a copy shrunk to 256-511 px: threshold the brightest channel
against the dark surround, keep the largest component, and fit a circle by least squares to the
component's boundary points that are not on the image border or on a straight edge. That rule
is what makes the fit robust to fields cut off by the frame (APTOS crops the top and bottom of
the disc), also when such an image was later padded back to a square, and to discs that are
off-centre; a robust refit drops outliers such as the notch some cameras print on the rim.
Images with no dark surround or no round bright region (all-black, uniform, a full-frame crop)
get `found=False`, and callers fall back to a centre square crop.

A photograph decoded at reduced scale (drray.data.images.read_photo: a JPEG at 1/2 or 1/4) comes
with that `scale` and its original `shape`; the circle is then still in pixels of the original,
within a pixel of what the full-resolution decode gives. Coordinates follow OpenCV's convention:
pixel (i, j) has its centre at y=i, x=j.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)

WORK_SIDE = 256
"""The circle is searched on a copy shrunk by an integer factor to a longer side of 256-511 px."""
DECODE_SCALES = (1, 2, 4, 8)
"""Reductions a photograph may have been decoded at: the DCT scalings of libjpeg."""
DECODE_MARGIN = 1.25
"""A reduced decode keeps the fundus crop at least this many times the network's side (see `decode_side`)."""
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
    band: tuple[float, float, float, float] | None = None
    """(top, bottom, left, right) pixel edges of the rows and columns that hold fundus: a field cut off
    by the frame (APTOS), or letterboxed back to a square with black bands, ends at the cut inside
    its circle. None: no bright region was measured (then the circle is all there is)."""


def check_rgb(img: np.ndarray, what: str = "image") -> None:
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"{what} must be an (H, W, 3) uint8 RGB array, got shape {img.shape} dtype {img.dtype}; "
            "read files with drray.data.images.read_rgb, which converts grayscale, RGBA and 16-bit images"
        )
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {img.shape}")


def original_shape(img: np.ndarray, scale: int, shape: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) of the photograph `img` was decoded from at 1/scale; checks that the two agree."""
    if scale not in DECODE_SCALES:
        raise ValueError(f"scale must be one of {DECODE_SCALES} (a JPEG's DCT scalings), got {scale!r}")
    if shape is None:
        if scale != 1:
            raise ValueError(f"an image decoded at 1/{scale} needs the original shape (H, W) to map its geometry back")
        return int(img.shape[0]), int(img.shape[1])
    h, w = int(shape[0]), int(shape[1])
    # A reduced decode has ceil(H / scale) rows (the last block may be partial).
    if (img.shape[0], img.shape[1]) != (-(-h // scale), -(-w // scale)):
        raise ValueError(
            f"image of shape {img.shape[:2]} is not a 1/{scale} decode of a {h}x{w} (H x W) photograph; "
            f"expected {(-(-h // scale), -(-w // scale))}"
        )
    return h, w


def centre_circle(h: int, w: int) -> FundusCircle:
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


def bright_region(rgb: np.ndarray) -> np.ndarray | None:
    """(H, W) uint8 0/1: the largest bright region, holes filled; None when there is no contrast."""
    # The brightest channel (red in a fundus) keeps the most signal in under-exposed photographs.
    grey = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])
    lo, hi = np.percentile(grey, (_LO_PCT, _HI_PCT))
    if hi - lo < _MIN_CONTRAST:
        logger.debug("no fundus: contrast %.1f grey levels (surround %.0f, bright %.0f)", hi - lo, lo, hi)
        return None
    thresh = lo + max(_THRESH_FRAC * (hi - lo), _MIN_STEP)
    return _largest_filled_component((grey > thresh).astype(np.uint8))


def _work_factor(h: int, w: int) -> int:
    """Original pixels per working-copy pixel for an (h, w) photograph: a longer side of WORK_SIDE..2*WORK_SIDE-1."""
    k = max(1, min(max(h, w) // WORK_SIDE, min(h, w) // 8))
    return 2 * (k // 2) if k >= 4 else k  # as _shrink rounds it: a row stride times two rows


def _shrink(img: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """Shrink by an integer factor k to a longer side of WORK_SIDE..2*WORK_SIDE-1 px.

    Returns the copy, k, and the source coordinates (oy, ox) of its pixel (0, 0)'s centre: small
    pixel (y, x) sits at source (y * k + oy, x * k + ox). Large photographs are block-averaged
    over every s-th row only: OpenCV reads a row-strided view without copying, which makes an
    APTOS-sized photograph 4x cheaper, and the circle's edge is no sharper than a few rows anyway.
    """
    h, w = img.shape[:2]
    k = _work_factor(h, w)
    if k == 1:
        return img, 1, 0.0, 0.0
    s, a = (k // 2, 2) if k >= 4 else (1, k)  # row stride, then rows averaged per block
    o = s // 2  # sample rows near the middle of each stride
    sh, sw = (h - o) // k, w // k
    # The < k trailing rows and columns left out only look like a frame edge, which the fit ignores.
    small = cv2.resize(img[o : o + sh * k : s, : sw * k], (sw, sh), interpolation=cv2.INTER_AREA)
    return small, k, o + (a - 1) * s / 2.0, (k - 1) / 2.0


def _working_copy(img: np.ndarray, scale: int, shape: tuple[int, int]) -> tuple[np.ndarray, float, float, float, float]:
    """The copy the circle is searched on, and where its pixels lie in the original photograph.

    Returns (small, ky, kx, oy, ox): small pixel (y, x) has its centre at original pixel
    (y * ky + oy, x * kx + ox). `img` is the photograph decoded at 1/scale of `shape`.
    The fitted radius depends on how coarse and how blurred the working copy is (the low
    threshold crosses a pixelated, blurred rim a little outside it), so a reduced decode is
    brought to what the full-resolution path sees, an average over k original pixels: the decode
    already averaged over `scale`, and averages add like variances, so it is area-shrunk by
    sqrt(k^2 - scale^2) more. On 3-16 Mpx photographs that kept the crop boxes within 1 px of
    the full path's, where rounding that factor to an integer (cv2's faster path) left 2 px.
    """
    if scale == 1:
        small, k, oy, ox = _shrink(img)
        return small, float(k), float(k), oy, ox
    h, w = img.shape[:2]
    k = _work_factor(*shape)
    f = np.sqrt(max(k * k - scale * scale, 0)) / scale  # reduced pixels per working pixel
    if f > 1:
        sh, sw = max(1, round(h / f)), max(1, round(w / f))
        img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
        fy, fx = h / sh, w / sw  # the exact factors cv2.resize used, edge to edge
    else:
        fy = fx = 1.0
    # Reduced pixel j covers original pixels [j*scale, (j+1)*scale); a working pixel spans f of them.
    ky, kx = fy * scale, fx * scale
    return img, ky, kx, (ky - 1) / 2.0, (kx - 1) / 2.0


def find_fundus(img: np.ndarray, scale: int = 1, shape: tuple[int, int] | None = None) -> FundusCircle:
    """Locate the circular field of view of a fundus photograph (H, W, 3) uint8 RGB.

    scale, shape: `img` was decoded at 1/scale (a JPEG's DCT scaling, see
    drray.data.images.read_photo) of a photograph of `shape` (H, W); the circle is returned in
    pixels of that original photograph.
    """
    check_rgb(img)
    h, w = original_shape(img, scale, shape)
    if min(h, w) < 8 or min(img.shape[:2]) < 2:
        logger.debug("no fundus: image %dx%d is too small", w, h)
        return centre_circle(h, w)
    small, ky, kx, oy, ox = _working_copy(img, scale, (h, w))
    k = max(ky, kx)
    sh, sw = small.shape[:2]
    fov = bright_region(small)
    if fov is None:
        return centre_circle(h, w)
    area = int(fov.sum())
    if area < _MIN_AREA_FRAC * sh * sw:
        logger.debug("no fundus: largest bright region is %.1f%% of the frame", 100.0 * area / (sh * sw))
        return centre_circle(h, w)
    px, py = _boundary_points(fov.astype(bool))
    if px.size < _MIN_POINTS:
        logger.debug("no fundus: bright region has no edge inside the frame (full-frame image?)")
        return centre_circle(h, w)
    px, py = px * kx + ox, py * ky + oy  # to original pixels before fitting
    keep = np.ones(px.size, dtype=bool)
    for _ in range(3):
        cx, cy, r = _fit_circle(px[keep], py[keep])
        resid = np.abs(np.hypot(px - cx, py - cy) - r)
        mad = np.median(resid[keep])
        new_keep = resid <= max(k, 3.0 * 1.4826 * mad)
        if new_keep.sum() < _MIN_POINTS or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if not (0 < r <= max(h, w)):
        logger.debug("no fundus: fitted radius %.1f px is implausible for a %dx%d image", r, w, h)
        return centre_circle(h, w)
    yy, xx = np.ogrid[:sh, :sw]
    disc = np.hypot(xx * kx + ox - cx, yy * ky + oy - cy) <= r
    inter = np.count_nonzero(disc & fov.astype(bool))
    inside, covered = inter / max(1, area), inter / max(1, np.count_nonzero(disc))
    logger.debug("fundus fit: share of bright region in circle %.3f, share of circle covered %.3f", inside, covered)
    if inside < _MIN_INSIDE or covered < _MIN_COVERED:
        logger.debug("no fundus: bright region is not round")
        return centre_circle(h, w)
    return FundusCircle(cx=cx, cy=cy, r=r, found=True, band=_bright_band(fov, ky, kx, oy, ox, (h, w)))


def _bright_band(fov: np.ndarray, ky: float, kx: float, oy: float, ox: float,
                 shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """The bright region's rows and columns as pixel edges (top, bottom, left, right) of the original:
    small pixel y covers original rows y * ky + oy + 0.5 -/+ ky / 2 (its centre is y * ky + oy)."""
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    h, w = shape
    top = max(0.0, rows[0] * ky + oy + 0.5 - ky / 2)
    bottom = min(float(h), rows[-1] * ky + oy + 0.5 + ky / 2)
    left = max(0.0, cols[0] * kx + ox + 0.5 - kx / 2)
    right = min(float(w), cols[-1] * kx + ox + 0.5 + kx / 2)
    return (top, bottom, left, right)
