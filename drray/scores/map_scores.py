"""One map -> the columns of its explanation row: the map clipped to the field of view, stored, peaked and scored.

    scored = map_scores(cam, geometry, mask_bits, cam_size=32, tolerance=0.02, grid_stride=8)
    scored.cam        # (S, S) float32: the map inside the fundus, what the row stores and the overlay shows
    scored.columns    # cam, cam_h, cam_w, peak_y, peak_x, cam_entropy, pointing_hit, energy_*, od_energy,
                      # lesion_area, chance_hit, ideal_energy, and the mask-free descriptors map_grid,
                      # mass_y, mass_x, mass_spread, rim_energy, outside_energy, flags
                      # (drray.scores.descriptors; schema.EXPLANATIONS_SCHEMA)

Every path that scores a map comes here through `drray.inference.Predictor.score_maps`: the explain
actors, the randomisation check, layer selection and serving, so their numbers cannot drift apart.

Masks are compared at the preprocessed image's resolution: the engine upsamples each map to the
network input (S x S) and the lesion masks were warped to that grid with the image, so a
one-pixel microaneurysm still counts. The stored map is that map shrunk to `cam_size` (area
average) as float16; `cam_entropy` is measured on the stored map, so anyone can recompute it
(drray.scores.localisation.entropy: the map as a distribution, entropy / log(h*w), in [0, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from drray.schema import LESION_TYPES, OPTIC_DISC
from drray.scores.localisation import energy_share, entropy, peak, pointing_hit, shrink_map
from drray.storage import finite_or_none

if TYPE_CHECKING:
    from drray.data.geometry import Geometry


@dataclass
class ScoredMap:
    """A map as its explanation row has it."""

    cam: np.ndarray
    """(S, S) float32 in [0, 1]: the map inside the field of view (`within_field`)."""
    columns: dict[str, Any]
    """The row's map-dependent columns (and `overlay_png` where an overlay was drawn)."""
    overlay: np.ndarray | None = field(default=None, repr=False)
    """(s, s, 3) uint8: the map blended on the photograph, where one was given."""


def within_field(cam: np.ndarray, field_of_view: np.ndarray | None) -> np.ndarray:
    """The map restricted to the fundus: zero outside the field of view, rescaled to a maximum of 1.

    A peak or map mass in the black border around the fundus points at nothing a grader could see;
    the chance baselines (`chance_hit`, `lesion_area`) are taken inside the field too, so scores of
    the restricted map compare with them like for like (a uniform map then scores exactly the lesion
    area share). Unchanged without a field (no fundus found).
    """
    if field_of_view is None or not field_of_view.any():
        return cam
    inside = np.where(field_of_view, cam, 0.0).astype(np.float32, copy=False)
    top = float(inside.max())
    return inside / top if top > 0 else inside


def decode_map(blob: bytes, h: int, w: int) -> np.ndarray:
    """The `cam` column of a row back to an (h, w) float32 map (inverse of what map_scores stores)."""
    return np.frombuffer(blob, dtype=np.float16).reshape(int(h), int(w)).astype(np.float32)


def map_scores(
    cam: np.ndarray,
    geometry: "Geometry",
    mask_bits: np.ndarray | None,
    *,
    cam_size: int,
    tolerance: float,
    grid_stride: int | None = None,
    eye: str | None = None,
) -> ScoredMap:
    """The map inside its photograph's field of view, and the columns of its explanation row.

    cam: (S, S) map in [0, 1] on the preprocessed image's grid.
    geometry: the photograph's decode geometry (drray.data.geometry): the crop box and original
    size turn the peak into image coordinates, and its field of view (`Geometry.field_mask`) is
    where the map is scored and stored; with masks it gives `lesion_area` (lesion pixels / field
    pixels) and `chance_hit` (the exact share of the field within the tolerance of a lesion
    pixel: what a peak dropped at random in the fundus scores).
    mask_bits: (S, S) uint8 lesion bits (drray.data.mask_bits) on the same grid, or None.
    tolerance: pointing-game tolerance as a share of S.
    grid_stride: output stride of the layer the map was computed at (its finest, for a fused target);
    with masks and a field it gives `ideal_energy`, the `energy_in_lesions` of the ideal map on that
    grid (drray.scores.localisation.ideal_energy_share): how much of a map's mass can sit on these
    lesions at all once they are drawn in cells of that size.
    eye: "left" or "right" where known: the descriptors (drray.scores.descriptors) mirror left eyes.
    Lesion scores are null where the image has no pixel of that type (no mask, or an empty one):
    there is nothing to point at, and a share of 0 would only restate the absence.
    """
    from drray.data.mask_bits import unpack_mask
    from drray.data.preprocess import box_to_image_coords

    from drray.scores.descriptors import map_descriptors

    side = cam.shape[0]
    field_of_view = geometry.field_mask(side)
    raw = cam
    cam = within_field(cam, field_of_view)
    small = shrink_map(cam, cam_size)
    p = peak(cam)
    if p is None or geometry.box_side <= 0:
        peak_y = peak_x = None
    else:
        peak_y, peak_x = box_to_image_coords(p[0], p[1], geometry.box, side, geometry.orig_shape)
    row: dict[str, Any] = {
        "cam": small.astype(np.float16).tobytes(),
        "cam_h": cam_size,
        "cam_w": cam_size,
        "peak_y": peak_y,
        "peak_x": peak_x,
        "cam_entropy": finite_or_none(entropy(small)),
        "pointing_hit": None,
        "energy_in_lesions": None,
        "od_energy": None,
        **{f"energy_{t}": None for t in LESION_TYPES},
        "lesion_area": None,
        "chance_hit": None,
        "ideal_energy": None,
    }
    if mask_bits is None:
        row.update(map_descriptors(raw, geometry, eye, field_of_view=field_of_view))
        return ScoredMap(cam, row)
    lesions = unpack_mask(mask_bits, LESION_TYPES)
    if lesions.any():
        row["pointing_hit"] = pointing_hit(cam, lesions, tolerance * side)
        row["energy_in_lesions"] = finite_or_none(energy_share(cam, lesions))
        if field_of_view is not None and field_of_view.any():
            from drray.scores.localisation import chance_hit_rate, ideal_energy_share, lesion_area_share

            row["lesion_area"] = lesion_area_share(lesions, field_of_view)
            row["chance_hit"] = chance_hit_rate(lesions, field_of_view, tolerance * side)
            if grid_stride:
                row["ideal_energy"] = finite_or_none(ideal_energy_share(lesions, field_of_view, grid_stride))
    for t in LESION_TYPES + (OPTIC_DISC,):
        m = unpack_mask(mask_bits, t)
        if m.any():
            row["od_energy" if t == OPTIC_DISC else f"energy_{t}"] = finite_or_none(energy_share(cam, m))
    row.update(map_descriptors(raw, geometry, eye, od_energy=row["od_energy"], field_of_view=field_of_view))
    return ScoredMap(cam, row)
