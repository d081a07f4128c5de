"""The photographs beside a gallery's maps: the colour fundus crop, and the lesion masks outlined on it.

A card shows what the model saw and what the graders marked: the original photograph (the
manifest's `path`, relative to the manifest's folder) cropped to the fundus with the model's own
preprocessing (its model card), and, where the manifest has masks, each lesion type outlined in
its colour with the map's peak marked, on the same crop the table's overlay is drawn on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from drray import storage
from drray.config import PreprocessConfig
from drray.schema import MASK_COLUMNS, MASK_TYPES

log = logging.getLogger(__name__)

LESION_COLOURS = {  # RGB, chosen to stand apart on a red-orange fundus
    "ma": (255, 40, 40), "he": (150, 0, 200), "ex": (255, 255, 0), "se": (255, 255, 255),
    "nv": (0, 255, 120), "od": (0, 160, 255),
}
PEAK_COLOUR = (0, 255, 255)


@dataclass
class FundusViews:
    photo_jpeg: bytes
    """The colour crop the overlay is drawn on."""
    lesions_jpeg: bytes | None
    """The same crop with lesion outlines and the map's peak; None without masks."""
    lesion_types: tuple[str, ...]
    """The mask types outlined (lesions and the optic disc)."""


def photo_location(path: str, base: str) -> str:
    """A manifest path, absolute or a URI as it is, else relative to the manifest's folder `base`."""
    from drray.storage import resolve_path

    if storage.is_uri(path) or os.path.isabs(path):
        return path
    return storage.join(base, path) if storage.is_uri(base) else resolve_path(path, base)


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, 88] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {ext}")
    return buf.tobytes()


def outline(colour: np.ndarray, bits: np.ndarray, peak: tuple[float, float] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """The crop with each mask type outlined in its colour (LESION_COLOURS) and the peak as a ring."""
    import cv2

    from drray.data.mask_bits import unpack_mask

    out = np.ascontiguousarray(colour.copy())
    found = []
    thickness = max(1, colour.shape[0] // 160)
    for t in MASK_TYPES:
        m = unpack_mask(bits, t).astype(np.uint8)
        if not m.any():
            continue
        found.append(t)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, LESION_COLOURS[t], thickness)
        # A microaneurysm is a pixel or two: ring it, or its outline is invisible at thumbnail size.
        small = max(2, colour.shape[0] // 64)
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            if max(w, h) <= small:
                cv2.circle(out, (x + w // 2, y + h // 2), small + 1, LESION_COLOURS[t], 1)
    if peak is not None:
        y, x = (int(round(v)) for v in peak)
        r = max(4, colour.shape[0] // 24)
        cv2.circle(out, (x, y), r, PEAK_COLOUR, thickness + 1)
        cv2.line(out, (x - r // 2, y), (x + r // 2, y), PEAK_COLOUR, 1)
        cv2.line(out, (x, y - r // 2), (x, y + r // 2), PEAK_COLOUR, 1)
    return out, tuple(found)


def fundus_views(record: dict[str, Any], base: str, cfg: PreprocessConfig,
                 peak: tuple[float | None, float | None] = (None, None)) -> FundusViews | None:
    """The crop and outlined masks of one manifest row (`path`, `mask_*`); None where the photograph is unreadable.

    peak: (peak_y, peak_x) as 0-1 fractions of the original photograph (the explanations table's).
    """
    from drray.data.decode import decode_photo_prepared, decode_record
    from drray.data.images import ImageError
    from drray.data.preprocess import image_to_box_coords

    where = photo_location(str(record["path"]), base)
    masks = None
    if storage.is_uri(where):  # masks are read from local files only; the photograph from anywhere
        try:
            prep, photo = decode_photo_prepared(storage.read_bytes(where), where, cfg)
        except (ImageError, OSError, ValueError) as e:
            log.warning("gallery: cannot read %s: %s", where, e)
            return None
        colour, box, shape = (prep.colour if prep.colour is not None else prep.image), prep.box, photo.shape
    else:
        mask_paths = {t: photo_location(str(record[c]), base) for t, c in zip(MASK_TYPES, MASK_COLUMNS)
                      if isinstance(record.get(c), str) and record.get(c)}
        d = decode_record(where, cfg, mask_paths or None)
        if d.error_reason:
            log.warning("gallery: cannot read %s: %s %s", where, d.error_reason, d.error_detail)
            return None
        colour = d.colour if d.colour is not None else d.image
        box, shape, masks = d.geometry.box, d.geometry.orig_shape, d.masks
    lesions_jpeg, types = None, ()
    if masks is not None:
        py, px = peak
        at = None
        if py is not None and px is not None and np.isfinite(py) and np.isfinite(px) and box.side > 0:
            at = image_to_box_coords(float(py), float(px), box, colour.shape[0], shape)
        drawn, types = outline(colour, masks, at)
        lesions_jpeg = _encode(drawn, ".jpg")
    return FundusViews(_encode(colour, ".jpg"), lesions_jpeg, types)
