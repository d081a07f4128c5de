"""Manifest -> Ray Dataset of preprocessed images with labels (and lesion masks), decoded in Ray tasks.

    ds = build_dataset("runs/demo/manifest.parquet", prep, split="train", with_masks=True)

Training, batch explanation and `drray.explain.grade` consume `build_dataset`; its decode tasks
run `drray.data.decode.decode_batch`, whose rows carry the image, the lesion bits and the
photograph's `Geometry` (drray.data.geometry) as columns. Manifest paths may be absolute (local
or a URI) or relative to the manifest's folder (`manifest_base_dir`, `drray.storage.resolve_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from drray.config import PreprocessConfig
from drray.data.decode import PASSTHROUGH_COLUMNS
from drray.data.images import DEFAULT_MAX_PIXELS
from drray.schema import MASK_COLUMNS


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

    from drray.data.decode import decode_batch

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
    for c in (*MASK_COLUMNS, "eye"):
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
