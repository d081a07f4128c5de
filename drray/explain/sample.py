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
    from drray.data.dataset import manifest_base_dir
    from drray.storage import resolve_path

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
    """drray.data.decode records: `.masks` (lesion bits), `.geometry` (crop box, field of view)."""
    rows: list[pd.Series]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def geometries(self) -> list:
        """Each row's `drray.data.geometry.Geometry`: what `Predictor.score_maps` scores its map in."""
        return [d.geometry for d in self.decoded]

    @property
    def masks(self) -> list:
        """Each row's lesion bits (drray.data.mask_bits)."""
        return [d.masks for d in self.decoded]


def decode_sample(rows: pd.DataFrame, prep: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> Sample:
    """Decode rows (paths already absolute) with their masks; unreadable images are left out."""
    from drray.data.decode import decode_record

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
