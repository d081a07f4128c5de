"""`Geometry`: where a prepared photograph came from and which of its pixels show fundus, as one record.

The decode step (drray.data.decode) measures it once per photograph; every consumer of a map
reads it from there: the explain actors (as columns of a Ray Data batch), the randomisation check
and layer selection (from decode records), serving (from `Geometry.of` an uploaded photograph),
the report and the benchmarks. Its fields are the crop box and original size in pixels of the
original photograph (peaks go back to image coordinates through them), `quality_ok`, and the
field of view on the prepared (S, S) grid: the circle the network sees and the band of rows and
columns that hold fundus, as pixel edges (all 0 when no fundus was found). `field_mask` draws it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:
    from drray.data.preprocess import CropBox, Prepared


@dataclass(frozen=True)
class Geometry:
    """The crop and the field of view of one prepared photograph (see the module docstring)."""

    box_y0: int = 0
    box_x0: int = 0
    box_side: int = 0
    """The square crop box in pixels of the original photograph (top-left pixel and side); 0: unreadable."""
    orig_h: int = 0
    orig_w: int = 0
    quality_ok: bool = False
    """False when no fundus was found (a centre crop was graded), or the photograph was unreadable."""
    fov_cy: float = 0.0
    fov_cx: float = 0.0
    fov_r: float = 0.0
    """The field-of-view circle in prepared pixels; with Ben Graham's normalisation it stops at the rim it keeps."""
    fov_top: float = 0.0
    fov_bottom: float = 0.0
    fov_left: float = 0.0
    fov_right: float = 0.0
    """The band of rows and columns holding fundus, as pixel edges of the prepared grid: a field cut off by
    the frame or letterboxed stops at the cut."""

    @classmethod
    def of(cls, prep: "Prepared", shape: tuple[int, int]) -> "Geometry":
        """The geometry of a photograph of original (H, W) `shape` prepared as `prep`.

        The field is the part of the fundus the network sees: with Ben Graham's normalisation the
        disc stops at its rim (`Prepared.visible`), since the ring past it is black, and a field cut
        off by the frame or letterboxed stops at the cut (`FundusCircle.band`). Maps are scored
        inside it and the chance baselines are taken over it (`field_mask`), so a map peaking on
        black, where no lesion can be seen, does not count as a miss against a chance rate that
        includes the black.
        """
        from drray.data.preprocess import circle_in_box

        box = dict(box_y0=prep.box.y0, box_x0=prep.box.x0, box_side=prep.box.side, orig_h=int(shape[0]),
                   orig_w=int(shape[1]), quality_ok=bool(prep.quality_ok))
        if not prep.circle.found:
            return cls(**box)
        size = prep.image.shape[0]
        c = circle_in_box(prep.circle, prep.box, size)
        top, bottom, left, right = c.band if c.band is not None else (0.0, size, 0.0, size)
        return cls(**box, fov_cy=float(c.cy), fov_cx=float(c.cx), fov_r=float(c.r * prep.visible),
                   fov_top=float(top), fov_bottom=float(bottom), fov_left=float(left), fov_right=float(right))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any], i: int | None = None) -> "Geometry":
        """From a mapping of the `COLUMNS` (a Ray Data row, or row `i` of a numpy batch)."""
        values = {k: columns[k] if i is None else columns[k][i] for k in COLUMNS}
        return cls(**{k: (float(v) if k.startswith("fov_") else bool(v) if k == "quality_ok" else int(v))
                      for k, v in values.items()})

    def columns(self) -> dict[str, Any]:
        """The fields as plain values, keyed by column name."""
        return dataclasses.asdict(self)

    @property
    def box(self) -> "CropBox":
        from drray.data.preprocess import CropBox

        return CropBox(self.box_y0, self.box_x0, self.box_side)

    @property
    def orig_shape(self) -> tuple[int, int]:
        """(H, W) of the original photograph."""
        return self.orig_h, self.orig_w

    def field_mask(self, size: int) -> np.ndarray | None:
        """(size, size) bool: the fundus the network sees, on the prepared grid; None when no fundus was found.

        The field-of-view disc (with Ben Graham's normalisation, inside its rim) within the band of
        rows and columns that hold fundus, so the black past the cut of a cut-off or letterboxed
        field (common in APTOS and EyePACS) is left out too.
        """
        if not self.quality_ok:
            return None
        disc = disc_mask(self.fov_cy, self.fov_cx, self.fov_r, size)
        if disc is None:
            return None
        # A prepared pixel is in the band when its centre is (the band's edges are pixel edges).
        centres = np.arange(size) + 0.5
        rows = (centres >= self.fov_top) & (centres <= self.fov_bottom)
        cols = (centres >= self.fov_left) & (centres <= self.fov_right)
        return disc & rows[:, None] & cols[None, :]


COLUMNS = tuple(f.name for f in dataclasses.fields(Geometry))
"""The geometry's columns in a decoded Ray Data batch, in field order."""
COLUMN_TYPES = {f.name: (np.float32 if f.name.startswith("fov_") else bool if f.name == "quality_ok" else np.int32)
                for f in dataclasses.fields(Geometry)}
"""The numpy dtype of each column in a decoded batch."""
UNREADABLE = Geometry()
"""The geometry of a photograph that could not be read: no box, no field."""


def disc_mask(cy: float, cx: float, r: float, size: int) -> np.ndarray | None:
    """(size, size) bool: the field-of-view disc on the prepared grid; None when no circle was found (r <= 0)."""
    if r <= 0:
        return None
    yy, xx = np.ogrid[:size, :size]
    return (xx - float(cx)) ** 2 + (yy - float(cy)) ** 2 <= float(r) * float(r)
