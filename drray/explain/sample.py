"""A sample of a manifest decoded in the driver's process: what the randomisation check and the layer selection score.

Both explain a few dozen to a few hundred images with lesion masks several times over (model
copies, strides), which costs seconds in one process and would only add start-up as a Ray job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from drray.config import PreprocessConfig
from drray.data.images import DEFAULT_MAX_PIXELS
from drray.schema import LESION_TYPES, MASK_COLUMNS

LESION_MASK_COLUMNS = tuple(f"mask_{t}" for t in LESION_TYPES)


def absolute_paths(df: pd.DataFrame, manifest: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """Resolve paths relative to the manifest's folder: the filtered frame no longer knows it."""
    from drray.data.dataset import manifest_base_dir, resolve_path

    base = manifest_base_dir(manifest)
    if base is None:
        return df
    df = df.copy()
    for col in ("path", *MASK_COLUMNS):
        if col in df.columns:
            df[col] = [resolve_path(p, base) if isinstance(p, str) and p else p for p in df[col]]
    return df


def has_lesion_mask(manifest: pd.DataFrame) -> pd.Series:
    """Per row: does any lesion-type mask path exist (the pointing game needs lesions)?"""
    masks = [c for c in LESION_MASK_COLUMNS if c in manifest.columns]
    return manifest[masks].notna().any(axis=1) if masks else pd.Series(False, index=manifest.index)


def sample_rows(manifest: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to n rows, images with a lesion mask first, drawn with `seed`."""
    has = has_lesion_mask(manifest)
    ordered = pd.concat([manifest[has].sample(frac=1, random_state=seed), manifest[~has].sample(frac=1, random_state=seed)])
    return ordered.head(n).reset_index(drop=True)


@dataclass
class Sample:
    """Decoded rows: network inputs (N, S, S, 3) uint8, with each row's decode record and manifest row."""

    images: np.ndarray
    decoded: list
    """drray.data.dataset decode records: `.masks` (lesion bits), `.geometry` (crop box, field of view)."""
    rows: list[pd.Series]

    def __len__(self) -> int:
        return len(self.rows)

    def field_of_view(self, i: int) -> np.ndarray | None:
        """(S, S) bool: the fundus image i's network sees (`drray.data.dataset.field_mask`); None where none was found."""
        from drray.data.dataset import field_mask

        return field_mask(self.decoded[i].geometry, self.images.shape[1])

    def box(self, i: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
        """(crop box (y0, x0, side), original (H, W)) of image i, as `Predictor.score_map` takes them."""
        g = self.decoded[i].geometry
        return (g["box_y0"], g["box_x0"], g["box_side"]), (g["orig_h"], g["orig_w"])


def decode_sample(rows: pd.DataFrame, prep: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Sample:
    """Decode rows (paths already absolute) with their masks; unreadable images are left out."""
    from drray.data.dataset import decode_record

    decoded, kept = [], []
    for _, r in rows.iterrows():
        masks = {c[len("mask_"):]: r[c] for c in MASK_COLUMNS if c in rows.columns and isinstance(r[c], str)}
        d = decode_record(r["path"], prep, masks, max_pixels)
        if not d.error_reason:
            decoded.append(d)
            kept.append(r)
    size = prep.image_size
    images = np.stack([d.image for d in decoded]) if decoded else np.zeros((0, size, size, 3), np.uint8)
    return Sample(images, decoded, kept)
