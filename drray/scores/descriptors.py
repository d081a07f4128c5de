"""What a map looks at, in numbers that need no lesion mask: its shape in the fundus frame and flags a reviewer filters on.

    d = map_descriptors(raw_cam, geometry, eye="left", od_energy=0.1)
    d["map_grid"]      # 16 x 16 float16 bytes: the map's mass on a grid over the crop box, summing to 1,
                       # left eyes mirrored so the optic disc sits on the same (nasal, right) side for all
    d["mass_y"], d["mass_x"], d["mass_spread"]   # mass centre and RMS spread, in field radii from its centre
    d["rim_energy"], d["outside_energy"]         # mass on the field's outer rim, and where there is no retina
    d["flags"]                                   # e.g. ["outside_field"]: see FLAG_RULES

These are measured on the map as the engine made it, before it is clipped to the field of view
(`drray.scores.map_scores.within_field`): a model that reads a notch, a caption or a dark frame
edge puts its mass where there is no retina, and the clipped map could not show that. The grid is
the input of `drray audit`, which clusters the grids of a whole archive into strategies.

Coordinates are those of the fundus: the field-of-view circle's centre is 0, its radius 1, y grows
downwards and x towards the nasal side (to the right in a right eye as photographed; left eyes are
mirrored). Without a field (no fundus found) the crop box's inscribed circle stands in for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from drray.storage import finite_or_none

if TYPE_CHECKING:
    from drray.data.geometry import Geometry

GRID = 16
"""Side of `map_grid`: cells of 14 px on a 224 px input, a little under the optic disc's diameter."""
RIM = 0.85
"""The field's rim: the ring from this share of the field radius to its edge (vignetting, flash, notches)."""
FLAG_RULES: dict[str, str] = {
    "outside_field": "outside_energy >= 0.5: half the map's mass where there is no retina (frame, notch, caption)",
    "rim": "rim_energy >= 0.5: half the map's mass on the outer 15% of the field's radius",
    "disc": "od_energy >= 0.5: half the map's mass on the optic disc (where a disc mask exists)",
    "empty_map": "the map has no positive value: it points at nothing",
}
"""Each flag and its rule, as README states them. A flag marks a map a reviewer should look at;
it is no verdict: `drray audit` judges strategies, over many maps, not single ones."""
FLAG_MIN = 0.5


def fundus_frame(geometry: "Geometry", size: int) -> tuple[float, float, float]:
    """(cy, cx, r) of the field-of-view circle on the (size, size) input grid; the inscribed circle without one."""
    if geometry.quality_ok and geometry.fov_r > 0:
        return float(geometry.fov_cy), float(geometry.fov_cx), float(geometry.fov_r)
    return size / 2.0, size / 2.0, size / 2.0


def is_left(eye: Any) -> bool:
    return isinstance(eye, str) and eye.strip().lower() in ("left", "l", "os")


def map_grid(cam: np.ndarray, left: bool, grid: int = GRID) -> np.ndarray:
    """(grid, grid) float32 summing to 1 (all zeros for an empty map): the map's mass per cell, left eyes mirrored."""
    from drray.scores.localisation import shrink_map

    small = np.clip(shrink_map(cam, grid), 0.0, None)
    if left:
        small = small[:, ::-1]
    total = float(small.sum())
    return (small / total if total > 0 else np.zeros_like(small)).astype(np.float32)


def map_descriptors(cam: np.ndarray, geometry: "Geometry", eye: Any = None, *, od_energy: float | None = None,
                    field_of_view: np.ndarray | None = None, grid: int = GRID) -> dict[str, Any]:
    """The descriptor columns of one map (see the module docstring).

    cam: (S, S) map in [0, 1] on the input grid, before it is clipped to the field.
    field_of_view: `geometry.field_mask(S)`, when the caller has it already.
    od_energy: the map's share on the optic disc, where a disc mask gave one (for the `disc` flag).
    """
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, None)
    side = cam.shape[0]
    left = is_left(eye)
    g = map_grid(cam, left, grid)
    total = float(cam.sum())
    out: dict[str, Any] = {"map_grid": g.astype(np.float16).tobytes(), "mass_y": None, "mass_x": None,
                           "mass_spread": None, "rim_energy": None, "outside_energy": None}
    if total <= 0:
        out["flags"] = ["empty_map"]
        return out
    cy, cx, r = fundus_frame(geometry, side)
    centres = np.arange(side, dtype=np.float32) + 0.5
    ys = (centres - cy) / r
    xs = (centres - cx) / r
    if left:
        xs = -xs
    w_rows, w_cols = cam.sum(axis=1) / total, cam.sum(axis=0) / total
    my, mx = float(w_rows @ ys), float(w_cols @ xs)
    spread2 = float(w_rows @ (ys - my) ** 2 + w_cols @ (xs - mx) ** 2)
    out.update(mass_y=finite_or_none(my), mass_x=finite_or_none(mx), mass_spread=finite_or_none(np.sqrt(spread2)))
    if field_of_view is None:
        field_of_view = geometry.field_mask(side)
    if field_of_view is not None and field_of_view.any():
        radius = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
        out["outside_energy"] = finite_or_none(cam[~field_of_view].sum() / total)
        out["rim_energy"] = finite_or_none(cam[field_of_view & (radius >= RIM)].sum() / total)
    out["flags"] = flags_of(out["outside_energy"], out["rim_energy"], od_energy)
    return out


def flags_of(outside_energy: float | None, rim_energy: float | None, od_energy: float | None) -> list[str]:
    """The flags of one map by FLAG_RULES (nulls raise none)."""
    flags = []
    for name, value in (("outside_field", outside_energy), ("rim", rim_energy), ("disc", od_energy)):
        if value is not None and value >= FLAG_MIN:
            flags.append(name)
    return flags


def decode_grid(blob: bytes, grid: int = GRID) -> np.ndarray:
    """The `map_grid` column of a row back to a (grid, grid) float32 array."""
    return np.frombuffer(blob, dtype=np.float16).reshape(grid, grid).astype(np.float32)
