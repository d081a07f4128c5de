"""Localisation scores of an explanation map against lesion masks: pure numpy.

A map (cam) is a non-negative float array (H, W), normally in [0, 1]; masks are boolean arrays
of the same shape. The explanation pipeline calls these at the preprocessed image's resolution
(the map upsampled to the masks, never the masks shrunk to the map, so a one-pixel
microaneurysm still counts), and tests call them with small hand-made arrays.

A map with no mass (all zeros, which Grad-CAM gives when every gradient is negative) has no
peak and no distribution: `peak` returns None, `entropy` and `energy_share` return NaN, and
`pointing_hit` returns False (a map that points nowhere misses).

Baselines make those scores readable: `chance_hit_rate` is what a peak dropped uniformly at
random inside the field of view scores in the pointing game (computed exactly, no sampling), and
`lesion_area_share` is what a uniform map scores in `energy_share`. `ideal_energy_share` is the other
end: the share a map drawn from the lesion masks themselves reaches when it has only a stride-s
grid to draw on, as a CAM of a layer at output stride s has. `rank_correlation` compares two maps
of one image (the model-randomisation sanity check, drray.cam.sanity).
"""

from __future__ import annotations

import numpy as np


def _check_map(cam: np.ndarray) -> np.ndarray:
    cam = np.asarray(cam)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"a map must be a non-empty (H, W) array, got shape {cam.shape}")
    return cam.astype(np.float64, copy=False)


def _check_mask(cam: np.ndarray, mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != cam.shape:
        raise ValueError(
            f"mask shape {mask.shape} differs from map shape {cam.shape}; "
            "resize the map to the mask (bilinear) before scoring"
        )
    return mask.astype(bool, copy=False)


def mass(cam: np.ndarray) -> float:
    """Total of the map's positive values (negative values, from rounding, count as 0)."""
    return float(np.clip(_check_map(cam), 0.0, None).sum())


def peak(cam: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the map's maximum; the first in row-major order on ties; None for an empty map."""
    c = _check_map(cam)
    if not np.isfinite(c).all():
        raise ValueError("map has NaN or infinite values")
    if c.max() <= 0.0:
        return None
    y, x = np.unravel_index(int(np.argmax(c)), c.shape)
    return int(y), int(x)


def entropy(cam: np.ndarray) -> float:
    """Shannon entropy of the map read as a distribution over its pixels, divided by log(H*W).

    The result is in [0, 1]: 0 when all mass is on one pixel (a sharp map), 1 for a uniform map
    (a map that says nothing). Dividing by log(H*W) makes maps of different sizes comparable;
    a 1-pixel map has entropy 0. NaN for a map with no mass.
    """
    c = np.clip(_check_map(cam), 0.0, None)
    total = c.sum()
    if total <= 0.0:
        return float("nan")
    n = c.size
    if n == 1:
        return 0.0
    p = c.ravel() / total
    p = p[p > 0]
    return float(np.clip(-(p * np.log(p)).sum() / np.log(n), 0.0, 1.0))


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance_px: float = 0.0) -> bool:
    """Pointing game: does the map's peak fall within `tolerance_px` pixels of a mask pixel?

    Equivalent to testing the peak against the mask dilated by a disc of radius `tolerance_px`
    (Zhang et al., "Top-down neural attention by excitation backprop", which uses 15 px on
    224 px images). The caller decides what an empty mask means; here it is a miss.
    """
    c = _check_map(cam)
    m = _check_mask(c, mask)
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    p = peak(c)
    if p is None or not m.any():
        return False
    # Only mask pixels in the square around the peak can be within the tolerance.
    r = int(np.floor(tolerance_px))
    y0, x0 = max(p[0] - r, 0), max(p[1] - r, 0)
    ys, xs = np.nonzero(m[y0:p[0] + r + 1, x0:p[1] + r + 1])
    if ys.size == 0:
        return False
    d2 = (ys + y0 - p[0]) ** 2 + (xs + x0 - p[1]) ** 2
    return bool(d2.min() <= tolerance_px * tolerance_px)


def energy_share(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the map's mass inside the mask: sum(cam * mask) / sum(cam), in [0, 1]; NaN for an empty map.

    A map spread uniformly scores the mask's area share, so compare against that baseline
    (`mask.mean()`) when judging a single number.
    """
    c = np.clip(_check_map(cam), 0.0, None)
    m = _check_mask(c, mask)
    total = c.sum()
    if total <= 0.0:
        return float("nan")
    return float(c[m].sum() / total)


def _check_field(lesions: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lesions, field = np.asarray(lesions), np.asarray(field)
    if lesions.ndim != 2 or lesions.shape != field.shape:
        raise ValueError(f"lesions {lesions.shape} and field {field.shape} must be (H, W) masks of one shape")
    return lesions.astype(bool, copy=False), field.astype(bool, copy=False)


def chance_hit_rate(lesions: np.ndarray, field: np.ndarray, tolerance_px: float = 0.0) -> float:
    """Pointing-game score of a random peak: the share of field pixels within `tolerance_px` of a lesion pixel.

    Exact: one Euclidean distance transform of the lesion mask, then the same test as
    `pointing_hit` (squared pixel distance <= tolerance squared) on every field pixel. Lesion
    pixels outside the field still count, as they do for a peak. 0.0 without lesions (every peak
    misses); NaN for an empty field.
    """
    from scipy.ndimage import distance_transform_edt

    lesions, field = _check_field(lesions, field)
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be >= 0, got {tolerance_px}")
    if not field.any():
        return float("nan")
    if not lesions.any():
        return 0.0
    # Squared distances are integers; rounding the transform's square undoes its sqrt exactly.
    d2 = np.rint(distance_transform_edt(~lesions) ** 2)
    return float((d2[field] <= tolerance_px * tolerance_px).mean())


def lesion_area_share(lesions: np.ndarray, field: np.ndarray) -> float:
    """Share of the field of view covered by lesions (what a uniform map scores in `energy_share`); NaN for no field."""
    lesions, field = _check_field(lesions, field)
    n = int(field.sum())
    return float(np.count_nonzero(lesions & field) / n) if n else float("nan")


def _area_matrix(n_cells: int, n_px: int) -> np.ndarray:
    """(n_cells, n_px): row j averages the pixels under cell j of a grid of n_cells spanning n_px (fractional edges)."""
    edges = np.arange(n_cells + 1) * (n_px / n_cells)
    px = np.arange(n_px)
    overlap = np.clip(np.minimum(edges[1:, None], px + 1) - np.maximum(edges[:-1, None], px), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _bilinear_matrix(n_px: int, n_cells: int) -> np.ndarray:
    """(n_px, n_cells): linear interpolation with half-pixel centres, clamped at the edges.

    What torch's bilinear upsampling (align_corners=False) and cv2.INTER_LINEAR do along one axis,
    so a map built here is spread over the image as drray spreads a CAM (drray.cam.maps.upsample_maps).
    """
    x = np.clip((np.arange(n_px) + 0.5) * (n_cells / n_px) - 0.5, 0.0, n_cells - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_cells - 1)
    w = np.zeros((n_px, n_cells))
    np.add.at(w, (np.arange(n_px), lo), 1.0 - (x - lo))
    np.add.at(w, (np.arange(n_px), hi), x - lo)
    return w


def lesions_on_grid(lesions: np.ndarray, stride: int) -> np.ndarray:
    """The lesion mask drawn as a map on an output-stride-`stride` grid: each cell's lesion share, upsampled.

    The grid has ceil(H / stride) x ceil(W / stride) cells (a strided layer's map over an H x W input);
    each holds the share of its pixels that are lesion, and the cells are interpolated back to
    (H, W) bilinearly as a CAM is. Of every map that layer could give, this is the one that shows
    each lesion in proportion and nothing else: what a perfect explanation looks like at that grid.
    """
    m = np.asarray(lesions)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"lesions must be a non-empty (H, W) mask, got shape {m.shape}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    h, w = m.shape
    gh, gw = -(-h // int(stride)), -(-w // int(stride))
    cells = _area_matrix(gh, h) @ m.astype(np.float64) @ _area_matrix(gw, w).T
    return _bilinear_matrix(h, gh) @ cells @ _bilinear_matrix(w, gw).T


def ideal_energy_share(lesions: np.ndarray, field: np.ndarray, stride: int) -> float:
    """`energy_share` of `lesions_on_grid` inside the field: what an ideal map at output stride `stride` scores.

    A CAM is a bilinear upsampling of its layer's grid, so at stride 8 a 3-pixel microaneurysm is
    at best a blob of about 8 pixels, most of it on healthy retina. The ideal map shows every lesion
    in proportion and nothing else; set against a map's own `energy_share` it separates what the
    resolution forbids from what the model looks at. (It is not a strict upper bound: a map lighting
    only the densest lesion cell scores higher, by leaving the other lesions out.) NaN without
    lesions or without a field.
    """
    lesions, field = _check_field(lesions, field)
    if not lesions.any() or not field.any():
        return float("nan")
    return energy_share(np.where(field, lesions_on_grid(lesions, stride), 0.0), lesions)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps over their pixels (ties share their mean rank); NaN when one is constant."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"rank_correlation needs two maps of one shape with >= 2 pixels, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("maps have NaN or infinite values")
    ra, rb = rankdata(a.ravel()), rankdata(b.ravel())
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def shrink_map(cam: np.ndarray, size: int) -> np.ndarray:
    """(H, W) map -> (size, size) float32 by area averaging (bilinear when enlarging)."""
    import cv2

    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == (size, size):
        return cam
    interp = cv2.INTER_AREA if cam.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(cam, (size, size), interpolation=interp)
