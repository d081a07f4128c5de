"""Fundus preprocessing: crop the field of view to a square, resize, Ben Graham; masks and coordinates alike.

One set of pure numpy/OpenCV functions used by training, batch explanation and serving, so a
photograph becomes the same network input everywhere. The field of view comes from
`drray.data.fundus.find_fundus`; photographs where none is found get a centre square crop and
`quality_ok=False`. Coordinates follow OpenCV's convention: pixel (i, j) has its centre at y=i,
x=j and covers [i-0.5, i+0.5] x [j-0.5, j+0.5].

A photograph decoded at reduced scale (drray.data.images.read_photo) comes with that `scale` and
its original `shape`; the crop box is then still in pixels of the original, so lesion masks (read
at full resolution) and peak coordinates need no other convention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from drray.config import PreprocessConfig
from drray.data.fundus import (  # noqa: F401  (FundusCircle and find_fundus stay importable from here)
    DECODE_MARGIN,
    FundusCircle,
    bright_region,
    centre_circle,
    check_rgb,
    find_fundus,
    original_shape,
)

logger = logging.getLogger(__name__)


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
    colour: np.ndarray | None = None
    """(S, S, 3) uint8: the same crop before Ben Graham's normalisation (the image itself without it),
    what overlays are drawn on, since it is the photograph a clinician recognises."""
    visible: float = 1.0
    """The share of the circle's radius that still shows fundus: Ben Graham's normalisation blanks
    everything past `BEN_GRAHAM_RIM` of it, and a map there points at black (`drray.data.geometry.Geometry.of`)."""

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
    band = None
    if circle.band is not None:  # edges, not pixel centres: no half-pixel shift
        top, bottom, left, right = circle.band
        band = ((top - box.y0) * s, (bottom - box.y0) * s, (left - box.x0) * s, (right - box.x0) * s)
    return FundusCircle(
        cx=(circle.cx - box.x0 + 0.5) * s - 0.5,
        cy=(circle.cy - box.y0 + 0.5) * s - 0.5,
        r=circle.r * s,
        found=circle.found,
        band=band,
    )


BEN_GRAHAM_RIM = 0.9
"""Share of the fundus radius Ben Graham's normalisation keeps (his own choice): the subtraction leaves
a bright ring at the field's edge, so the outer tenth is set to black."""


def ben_graham(
    img: np.ndarray,
    sigma: float,
    circle: FundusCircle | None = None,
    rim: float = BEN_GRAHAM_RIM,
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
    check_rgb(img)
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
    c = circle if circle is not None else centre_circle(h, w)
    yy, xx = np.ogrid[:h, :w]
    outside = (xx - c.cx) ** 2 + (yy - c.cy) ** 2 > (rim * c.r) ** 2
    out[outside] = 0
    return out


def footprint(box: CropBox, shape: tuple[int, int], size: int) -> np.ndarray:
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


def crop_resized(img: np.ndarray, box: CropBox, size: int, scale: int = 1) -> np.ndarray:
    """Cut `box` (in pixels of the original photograph) out of `img` decoded at 1/scale; resize to (size, size).

    At scale 1 the crop is exact. A reduced decode maps the box to fractional positions: it is
    resampled bilinearly onto the smallest multiple of `size` at least box.side/scale (enlarging
    by less than 2x, so nothing aliases) and area-averaged by that integer factor, so the network
    pixels cover the same part of the photograph as at full resolution. Parts outside the image
    are black either way.
    """
    if scale == 1:
        return _resize(crop_square(img, box), size)
    side = box.side / scale  # the box in reduced pixels, edge to edge
    k = max(1, int(np.ceil(side / size - 1e-9)))  # integer: cv2's fast INTER_AREA path below
    n = k * size
    a = side / n  # reduced pixels per pixel of the n-grid (<= 1: no aliasing in the bilinear step)
    # Inverse map: grid pixel u's centre sits at reduced coordinate x0/scale + (u + 0.5) * a - 0.5.
    m = np.array([[a, 0.0, box.x0 / scale + 0.5 * a - 0.5], [0.0, a, box.y0 / scale + 0.5 * a - 0.5]])
    grid = cv2.warpAffine(img, m, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return grid if k == 1 else cv2.resize(grid, (size, size), interpolation=cv2.INTER_AREA)


def decode_side(cfg: PreprocessConfig) -> int:
    """The shorter side a photograph must keep when it is decoded at reduced scale for `cfg`.

    A fundus fills about the shorter side of its frame, so this keeps the crop DECODE_MARGIN times
    the network's side: the final area-shrink still averages over more than one decoded pixel,
    which is what keeps the result within a grey level or two of a full-resolution decode.
    `prepare` checks the crop it actually got (`enough_resolution`) for a fundus smaller than that.
    """
    return int(np.ceil(DECODE_MARGIN * cfg.image_size))


def enough_resolution(box: CropBox, scale: int, cfg: PreprocessConfig) -> bool:
    """Whether a decode at 1/scale gives the crop `box` at least the network's side in pixels."""
    return scale == 1 or box.side / scale >= cfg.image_size


def prepare(img: np.ndarray, cfg: PreprocessConfig, scale: int = 1, shape: tuple[int, int] | None = None) -> Prepared:
    """Photograph -> network input: crop to the fundus (if cfg.crop), resize, Ben Graham (if set).

    Without cfg.crop the box is the centred square padding the whole image, so `prepare_mask` and
    `box_to_image_coords` apply either way.
    scale, shape: `img` was decoded at 1/scale of a photograph of `shape` (H, W), e.g. by
    drray.data.images.read_photo; the box and circle are then in pixels of that original, so
    masks and peak coordinates stay at full resolution.
    """
    check_rgb(img)
    shape = original_shape(img, scale, shape)
    circle = find_fundus(img, scale, shape)
    box = fundus_box(circle, shape) if cfg.crop else centre_box(shape, pad=True)
    out = crop_resized(img, box, cfg.image_size, scale)
    colour = out
    if cfg.ben_graham:
        sigma = cfg.ben_graham_sigma_frac * cfg.image_size
        size = cfg.image_size
        valid = footprint(box, shape, size)
        rim_circle = None
        if circle.found:
            # The local average is taken over the field only: the dark surround, and the black
            # bands of a cut-off field that was letterboxed, would leave bright rings and bands.
            rim_circle = circle_in_box(circle, box, size)
            yy, xx = np.ogrid[:size, :size]
            valid &= (xx - rim_circle.cx) ** 2 + (yy - rim_circle.cy) ** 2 <= rim_circle.r ** 2
            field = bright_region(out)
            if field is not None:
                # Eroded by a pixel: edge pixels that resizing mixed with the black are too dark.
                valid &= cv2.erode(field, np.ones((3, 3), np.uint8)).astype(bool)
        out = ben_graham(out, sigma, rim_circle, valid=valid)
    return Prepared(image=np.ascontiguousarray(out), box=box, circle=circle, quality_ok=circle.found, colour=colour,
                    visible=BEN_GRAHAM_RIM if cfg.ben_graham else 1.0)


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
