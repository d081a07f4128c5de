"""Decoding: encoded photographs (and their lesion masks) -> network inputs with their `Geometry`.

Training and batch explanation decode with `decode_batch` (Ray Data tasks, drray.data.dataset);
the randomisation check, layer selection and the report with `decode_record`; serving with
`decode_photo_prepared` on uploaded bytes. One reader, one preprocessing, one geometry record:
a photograph becomes the same network input, scored in the same field of view, everywhere.

Images travel as (S, S, 3) uint8 (a quarter of float32's bytes through the object store;
normalisation happens on the consumer's device) and, with masks, one (S, S) uint8 array of
lesion bits (drray.data.mask_bits). A row that cannot be read keeps its place with
`error_reason` set and a zero image, so callers decide whether to drop it or to write it to the
errors table: bad input never vanishes silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from drray.config import PreprocessConfig
from drray.data.geometry import COLUMN_TYPES, COLUMNS, UNREADABLE, Geometry
from drray.data.images import DEFAULT_MAX_PIXELS, ImageError, decode_photo, read_bytes, read_mask
from drray.data.mask_bits import mask_bits
from drray.schema import MASK_COLUMNS, MASK_TYPES

if TYPE_CHECKING:
    from drray.data.images import Photo
    from drray.data.preprocess import Prepared

log = logging.getLogger(__name__)

PASSTHROUGH_COLUMNS = ("image_id", "dataset", "split", "label", "patient_id", "eye", "path")
"""Manifest columns a decoded batch carries on unchanged."""


@dataclass
class Decoded:
    """One photograph decoded: the network input, its lesion bits and its geometry (or why it could not be read)."""

    image: np.ndarray
    """(S, S, 3) uint8."""
    masks: np.ndarray | None
    """(S, S) uint8 lesion bits, or None when no masks were asked for."""
    geometry: Geometry = field(default=UNREADABLE)
    error_reason: str = ""
    error_detail: str = ""
    colour: np.ndarray | None = None
    """(S, S, 3) uint8: the crop before Ben Graham, for overlays."""


def decode_photo_prepared(data: bytes, where: str, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
                          full_resolution: bool = False) -> tuple[Prepared, Photo]:
    """Encoded photograph -> (`Prepared` with its geometry in original pixels, the decoded `Photo`).

    A JPEG (and, by 4, a large PNG) is decoded at the largest reduction that keeps its shorter
    side `drray.data.preprocess.decode_side(cfg)`; a fundus so much smaller than its frame that
    its crop came out below the network's side is decoded again, finer, at the reduction its crop
    allows. `full_resolution` decodes every file whole (the reference the reduced path is measured
    against). Raises `ImageError`. Serving calls this on uploaded bytes.
    """
    from drray.data.preprocess import decode_side, enough_resolution, prepare

    min_side = None if full_resolution else decode_side(cfg)
    while True:
        photo = decode_photo(data, where, max_pixels, min_side)
        prep = prepare(photo.rgb, cfg, photo.scale, photo.shape)
        if enough_resolution(prep.box, photo.scale, cfg):
            return prep, photo
        # The shorter side that gives this crop decode_side(cfg) pixels, as the first guess meant
        # to; at least one step finer than now, so the loop ends (at full resolution at the latest).
        short = min(photo.shape)
        min_side = max(-(-short * decode_side(cfg) // prep.box.side), short // photo.scale + 1)
        log.debug("%s: crop of %d px at 1/%d is below %d px; decoding finer", where, prep.box.side,
                  photo.scale, cfg.image_size)


def read_prepared(path: str | os.PathLike, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
                  full_resolution: bool = False) -> tuple[Prepared, tuple[int, int]]:
    """(`Prepared`, original (H, W)) of a file; raises `ImageError` (missing_file, ...)."""
    prep, photo = decode_photo_prepared(read_bytes(path), str(path), cfg, max_pixels, full_resolution)
    return prep, photo.shape


def decode_record(
    path: str,
    cfg: PreprocessConfig,
    mask_paths: dict[str, str | None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full_resolution: bool = False,
) -> Decoded:
    """Read + preprocess one photograph (and its masks, warped with the same geometry).

    The geometry is in pixels of the original photograph whatever scale it was decoded at (see
    `decode_photo_prepared`); masks are read at full resolution and warped with it.
    """
    from drray.data.preprocess import prepare_mask

    size = cfg.image_size
    try:
        prep, (orig_h, orig_w) = read_prepared(path, cfg, max_pixels, full_resolution)
    except ImageError as e:
        return Decoded(np.zeros((size, size, 3), np.uint8),
                       np.zeros((size, size), np.uint8) if mask_paths is not None else None,
                       UNREADABLE, e.reason, e.detail)
    geometry = Geometry.of(prep, (orig_h, orig_w))
    bits = None
    if mask_paths is not None:
        warped = {}
        for t, mp in mask_paths.items():
            if not mp:
                continue
            try:
                m = read_mask(mp, shape=(orig_h, orig_w))
            except ImageError as e:
                # Ingest already recorded unreadable masks; a mask that broke since is logged, not fatal.
                log.warning("skipping %s mask of %s: %s", t, path, e)
                continue
            warped[t] = prepare_mask(m, prep.box, size)
        bits = mask_bits(warped, (size, size))
    return Decoded(prep.image, bits, geometry, colour=prep.colour)


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    cfg: PreprocessConfig,
    with_masks: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    base_dir: str | None = None,
    photo_size: int | None = None,
) -> dict[str, np.ndarray]:
    """`map_batches` function: manifest columns -> decoded columns (numpy batch format).

    The output holds the passthrough columns, `image`, `masks` (with_masks), `photo` (photo_size:
    the colour crop before Ben Graham at that side, for overlays), `error_reason`, `error_detail`
    and the `Geometry` as its columns (`Geometry.from_columns(batch, i)` reads row i back).
    """
    import cv2

    from drray.storage import resolve_path

    # Parallelism comes from many decode tasks; OpenCV's own thread pool would oversubscribe the cores.
    cv2.setNumThreads(1)
    n = len(batch["image_id"])
    images, masks, photos, errors, details = [], [], [], [], []
    geometry: dict[str, list] = {k: [] for k in COLUMNS}
    for i in range(n):
        mask_paths = None
        if with_masks:
            mask_paths = {}
            for t, col in zip(MASK_TYPES, MASK_COLUMNS):
                v = batch[col][i] if col in batch else None
                mask_paths[t] = resolve_path(v, base_dir) if isinstance(v, str) and v else None
        d = decode_record(resolve_path(str(batch["path"][i]), base_dir), cfg, mask_paths, max_pixels)
        images.append(d.image)
        if with_masks:
            masks.append(d.masks)
        if photo_size:
            colour = d.colour if d.colour is not None else d.image
            interp = cv2.INTER_AREA if colour.shape[0] > photo_size else cv2.INTER_LINEAR
            photos.append(cv2.resize(colour, (photo_size, photo_size), interpolation=interp)
                          if colour.shape[0] != photo_size else colour)
        errors.append(d.error_reason)
        details.append(d.error_detail)
        for k, v in d.geometry.columns().items():
            geometry[k].append(v)
    out: dict[str, np.ndarray] = {c: np.asarray(batch[c]) for c in PASSTHROUGH_COLUMNS if c in batch}
    out["image"] = np.stack(images) if images else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
    if with_masks:
        out["masks"] = np.stack(masks) if masks else np.zeros((0, cfg.image_size, cfg.image_size), np.uint8)
    if photo_size:
        out["photo"] = np.stack(photos) if photos else np.zeros((0, photo_size, photo_size, 3), np.uint8)
    out["error_reason"] = np.asarray(errors, dtype=object)
    out["error_detail"] = np.asarray(details, dtype=object)
    for k in COLUMNS:
        out[k] = np.asarray(geometry[k], dtype=COLUMN_TYPES[k])
    return out
