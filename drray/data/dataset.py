"""Manifest -> Ray Dataset of preprocessed images with labels (and lesion masks), decoded in Ray tasks.

Training and batch explanation both consume `build_dataset`; serving calls the same
`decode_record`, so a photograph is read and preprocessed one way everywhere.

Rows carry the image as (S, S, 3) uint8 (a quarter of float32's bytes through the object store;
normalisation happens on the consumer's device) and, with `with_masks`, one (S, S) uint8 array
whose bit i is set where lesion type `MASK_TYPES[i]` is present. A row that cannot be read keeps
its place with `error_reason` set and a zero image, so callers decide whether to drop it or to
write it to the errors table: bad input never vanishes silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from drray.config import PreprocessConfig
from drray.data.images import DEFAULT_MAX_PIXELS, ImageError, decode_photo, read_bytes, read_mask
from drray.schema import MASK_COLUMNS, MASK_TYPES

if TYPE_CHECKING:
    from drray.data.images import Photo
    from drray.data.preprocess import Prepared

log = logging.getLogger(__name__)

# Columns every decoded row has, besides the image (and masks).
GEOMETRY_COLUMNS = ("box_y0", "box_x0", "box_side", "orig_h", "orig_w", "quality_ok")
FIELD_COLUMNS = ("fov_cy", "fov_cx", "fov_r", "fov_top", "fov_bottom", "fov_left", "fov_right")
"""The field of view in pixels of the prepared (S, S) image: the circle the network sees and the band
of rows and columns that hold fundus, as pixel edges (all 0 when none was found; see `field_mask`)."""
PASSTHROUGH_COLUMNS = ("image_id", "dataset", "split", "label", "patient_id", "path")


def mask_bits(masks: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pack boolean masks by type into one uint8 array: bit i <-> MASK_TYPES[i]."""
    out = np.zeros(shape, dtype=np.uint8)
    for i, t in enumerate(MASK_TYPES):
        m = masks.get(t)
        if m is not None:
            out |= (m.astype(bool).astype(np.uint8) << i)
    return out


def unpack_mask(bits: np.ndarray, types: tuple[str, ...] | str) -> np.ndarray:
    """Boolean mask of the union of `types` from packed bits (any leading shape)."""
    if isinstance(types, str):
        types = (types,)
    sel = 0
    for t in types:
        sel |= 1 << MASK_TYPES.index(t)
    return (bits & sel) != 0


def resolve_path(path: str, base: str | os.PathLike | None) -> str:
    """Manifest paths may be absolute (local or a URI) or relative to the manifest's folder (local or a URI)."""
    from drray import storage

    if base is None or os.path.isabs(path) or storage.is_uri(path):
        return path
    return storage.join(base, path)


@dataclass
class Decoded:
    image: np.ndarray  # (S, S, 3) uint8
    masks: np.ndarray | None  # (S, S) uint8 bits, or None
    geometry: dict[str, Any]
    error_reason: str = ""
    error_detail: str = ""
    colour: np.ndarray | None = None  # (S, S, 3) uint8: the crop before Ben Graham, for overlays


def field_columns(prep: Prepared) -> dict[str, float]:
    """The field of view on the prepared grid: circle (fov_cy, fov_cx, fov_r) and band (fov_top,
    fov_bottom, fov_left, fov_right, pixel edges); all 0 when no fundus was found.

    It is the part of the fundus the network sees: with Ben Graham's normalisation the disc stops at
    its rim (`Prepared.visible`), since the ring past it is black, and a field cut off by the frame
    or letterboxed stops at the cut (`FundusCircle.band`: the rows and columns that hold fundus).
    Maps are scored inside it and the chance baselines are taken over it (`field_mask`), so a map
    peaking on black, where no lesion can be seen, does not count as a miss against a chance rate
    that includes the black.
    """
    from drray.data.preprocess import circle_in_box

    if not prep.circle.found:
        return dict.fromkeys(FIELD_COLUMNS, 0.0)
    size = prep.image.shape[0]
    c = circle_in_box(prep.circle, prep.box, size)
    top, bottom, left, right = c.band if c.band is not None else (0.0, size, 0.0, size)
    return dict(fov_cy=float(c.cy), fov_cx=float(c.cx), fov_r=float(c.r * prep.visible), fov_top=float(top),
                fov_bottom=float(bottom), fov_left=float(left), fov_right=float(right))


def geometry_of(prep: Prepared, shape: tuple[int, int]) -> dict[str, Any]:
    """The decode step's geometry columns (`GEOMETRY_COLUMNS` + `FIELD_COLUMNS`) of a photograph of
    original (H, W) `shape` prepared as `prep`: what scoring its map needs besides the map."""
    return dict(box_y0=prep.box.y0, box_x0=prep.box.x0, box_side=prep.box.side, orig_h=int(shape[0]),
                orig_w=int(shape[1]), quality_ok=bool(prep.quality_ok), **field_columns(prep))


def disc_mask(cy: float, cx: float, r: float, size: int) -> np.ndarray | None:
    """(size, size) bool: the field-of-view disc on the prepared grid; None when no circle was found (r <= 0)."""
    if r <= 0:
        return None
    yy, xx = np.ogrid[:size, :size]
    return (xx - float(cx)) ** 2 + (yy - float(cy)) ** 2 <= float(r) * float(r)


def field_mask(geometry: Any, size: int) -> np.ndarray | None:
    """(size, size) bool: the fundus the network sees, on the prepared grid; None when no fundus was found.

    geometry: a mapping with `quality_ok` and the `FIELD_COLUMNS` (`geometry_of`, a decode record's
    geometry, a Ray Data row): the field-of-view disc (with Ben Graham's normalisation, inside its
    rim) within the band of rows and columns that hold fundus, so the black past the cut of a
    cut-off or letterboxed field (common in APTOS and EyePACS) is left out too.
    """
    if not bool(geometry["quality_ok"]):
        return None
    disc = disc_mask(float(geometry["fov_cy"]), float(geometry["fov_cx"]), float(geometry["fov_r"]), size)
    if disc is None:
        return None
    # A prepared pixel is in the band when its centre is (the band's edges are pixel edges).
    top, bottom, left, right = (float(geometry[k]) for k in FIELD_COLUMNS[3:])
    centres = np.arange(size) + 0.5
    rows, cols = (centres >= top) & (centres <= bottom), (centres >= left) & (centres <= right)
    return disc & rows[:, None] & cols[None, :]


def decode_photo_prepared(data: bytes, where: str, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
                          full_resolution: bool = False) -> tuple[Prepared, Photo]:
    """Encoded photograph -> (`Prepared` with its geometry in original pixels, the decoded `Photo`).

    A JPEG (and, by 4, a large PNG) is decoded at the largest reduction that keeps its shorter
    side `drray.data.preprocess.decode_side(cfg)`; a fundus so much smaller than its frame that
    its crop came out below the network's side is decoded again, finer, at the reduction its crop
    allows. `full_resolution` decodes every file whole (the reference the reduced path is measured
    against). Raises `ImageError`. Serving can call this on uploaded bytes.
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


def decode_prepared(data: bytes, where: str, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
                    full_resolution: bool = False) -> tuple[Prepared, tuple[int, int]]:
    """(`Prepared`, original (H, W)) of an encoded photograph: `decode_photo_prepared` without the pixels."""
    prep, photo = decode_photo_prepared(data, where, cfg, max_pixels, full_resolution)
    return prep, photo.shape


def read_prepared(path: str | os.PathLike, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
                  full_resolution: bool = False) -> tuple[Prepared, tuple[int, int]]:
    """`decode_prepared` of a file; raises `ImageError` (missing_file, ...)."""
    return decode_prepared(read_bytes(path), str(path), cfg, max_pixels, full_resolution)


def decode_record(
    path: str,
    cfg: PreprocessConfig,
    mask_paths: dict[str, str | None] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full_resolution: bool = False,
) -> Decoded:
    """Read + preprocess one photograph (and its masks, warped with the same geometry).

    The geometry (box_*, orig_h, orig_w) is in pixels of the original photograph whatever scale
    it was decoded at (see `read_prepared`); masks are read at full resolution and warped with it.
    """
    from drray.data.preprocess import prepare_mask

    size = cfg.image_size
    try:
        prep, (orig_h, orig_w) = read_prepared(path, cfg, max_pixels, full_resolution)
    except ImageError as e:
        return Decoded(
            np.zeros((size, size, 3), np.uint8),
            np.zeros((size, size), np.uint8) if mask_paths is not None else None,
            dict(box_y0=0, box_x0=0, box_side=0, orig_h=0, orig_w=0, quality_ok=False,
                 **dict.fromkeys(FIELD_COLUMNS, 0.0)),
            e.reason,
            e.detail,
        )
    geometry = geometry_of(prep, (orig_h, orig_w))
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

    photo_size: also return `photo`, the colour crop (before Ben Graham) at that side, for overlays.
    """
    import cv2

    # Parallelism comes from many decode tasks; OpenCV's own thread pool would oversubscribe the cores.
    cv2.setNumThreads(1)
    n = len(batch["image_id"])
    images, masks, photos, errors, details = [], [], [], [], []
    geometry: dict[str, list] = {k: [] for k in GEOMETRY_COLUMNS + FIELD_COLUMNS}
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
        for k in GEOMETRY_COLUMNS + FIELD_COLUMNS:
            geometry[k].append(d.geometry[k])
    out: dict[str, np.ndarray] = {c: np.asarray(batch[c]) for c in PASSTHROUGH_COLUMNS if c in batch}
    out["image"] = np.stack(images) if images else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
    if with_masks:
        out["masks"] = np.stack(masks) if masks else np.zeros((0, cfg.image_size, cfg.image_size), np.uint8)
    if photo_size:
        out["photo"] = np.stack(photos) if photos else np.zeros((0, photo_size, photo_size, 3), np.uint8)
    out["error_reason"] = np.asarray(errors, dtype=object)
    out["error_detail"] = np.asarray(details, dtype=object)
    for k in GEOMETRY_COLUMNS:
        out[k] = np.asarray(geometry[k], dtype=bool if k == "quality_ok" else np.int32)
    for k in FIELD_COLUMNS:
        out[k] = np.asarray(geometry[k], dtype=np.float32)
    return out


def load_manifest(manifest: str | os.PathLike | pd.DataFrame, split: str | list[str] | None = None) -> pd.DataFrame:
    """A manifest file or frame, optionally restricted to one or more splits."""
    if isinstance(manifest, pd.DataFrame):
        df = manifest
    else:
        from drray.data.ingest import read_manifest

        df = read_manifest(manifest)
    if split is not None:
        splits = [split] if isinstance(split, str) else list(split)
        df = df[df["split"].isin(splits)]
    return df.reset_index(drop=True)


def manifest_base_dir(manifest: str | os.PathLike | pd.DataFrame) -> str | None:
    """The folder (local or URI) that relative manifest paths start from; None for a frame."""
    import posixpath

    from drray import storage

    if isinstance(manifest, pd.DataFrame):
        return None
    if storage.is_uri(manifest):
        return posixpath.dirname(str(manifest))
    return str(Path(manifest).resolve().parent)


def build_dataset(
    manifest: str | os.PathLike | pd.DataFrame,
    cfg: PreprocessConfig,
    *,
    split: str | list[str] | None = None,
    with_masks: bool = False,
    labelled_only: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    batch_size: int = 16,
    num_cpus: float = 1.0,
    rows_per_block: int = 64,
    photo_size: int | None = None,
):
    """Manifest -> `ray.data.Dataset` of decoded, preprocessed rows (see module docstring).

    photo_size: rows also carry `photo`, the colour crop at that side (overlays for reports).

    Decoding runs as Ray tasks (`num_cpus` each), streaming: nothing is collected to the driver.
    """
    import ray

    base = manifest_base_dir(manifest)
    df = load_manifest(manifest, split)
    if labelled_only:
        df = df[df["label"].notna()].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"no rows in manifest {manifest!s} for split={split!r} (labelled_only={labelled_only})")
    keep = [c for c in (*PASSTHROUGH_COLUMNS, *MASK_COLUMNS) if c in df.columns]
    df = df[keep].copy()
    # Arrow cannot carry a nullable int8 through numpy batches: unknown labels become -1.
    df["label"] = df["label"].fillna(-1).astype(np.int16)
    for c in MASK_COLUMNS:
        if c in df.columns:
            df[c] = df[c].astype(object).where(df[c].notna(), "")
    # Blocks are cut here: from_pandas(override_num_blocks=...) relies on np.array_split of a
    # DataFrame, which yields bare arrays with pandas 3.
    blocks = [df.iloc[i : i + rows_per_block] for i in range(0, len(df), rows_per_block)]
    ds = ray.data.from_pandas(blocks)
    return ds.map_batches(
        decode_batch,
        fn_kwargs=dict(cfg=cfg, with_masks=with_masks, max_pixels=max_pixels, base_dir=base, photo_size=photo_size),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus,
    )
