"""The model-randomisation sanity check of a run (Adebayo et al. 2018), into RUN/randomisation.parquet.

A sample of the explained images (lesion images first, where the manifest has masks) is explained
again by copies of the model whose top blocks are re-initialised, cascading from the head down to
the first stage (drray.cam.sanity). Per image, method and step it stores the rank correlation of
the copy's map with the trained model's, and the copy's pointing hit, chance rate and energy in
lesions: maps that explain the model fall away from the trained ones as the cascade deepens, and
with every block random their hit rate falls to chance. `drray evaluate` reports it beside the
trained model's figures.

The sample is small (cam.sanity_images, default 64) and runs in the driver's process: a few model
copies over a few dozen images cost seconds, and the copies never leave the process.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from drray.config import CamConfig
from drray.data.images import DEFAULT_MAX_PIXELS
from drray.schema import LESION_TYPES, MASK_COLUMNS, RANDOMISATION_SCHEMA

log = logging.getLogger(__name__)

LESION_MASK_COLUMNS = tuple(f"mask_{t}" for t in LESION_TYPES)


@dataclass
class SanityResult:
    """What the check wrote: the table's location, its size, and the mean rank correlation per step."""

    path: str
    images: int
    steps: list[str]
    mean_rank_corr: dict[str, float]


def sample_rows(manifest: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to n rows, images with a lesion mask first (the pointing game needs lesions), drawn with `seed`."""
    masks = [c for c in LESION_MASK_COLUMNS if c in manifest.columns]
    has = manifest[masks].notna().any(axis=1) if masks else pd.Series(False, index=manifest.index)
    ordered = pd.concat([manifest[has].sample(frac=1, random_state=seed), manifest[~has].sample(frac=1, random_state=seed)])
    return ordered.head(n).reset_index(drop=True)


def randomisation_check(manifest: pd.DataFrame, model_dir, out: str | os.PathLike, *, methods: Sequence[str],
                        cam: CamConfig, max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0) -> SanityResult | None:
    """Explain a sample of `manifest` (paths already absolute) with the trained model and its cascade of
    re-initialised copies; write OUT/randomisation.parquet. None when there is nothing to check."""
    from drray import storage
    from drray.cam.sanity import cascade_blocks, randomised_copy
    from drray.data.dataset import decode_record
    from drray.evaluate.localisation import rank_correlation
    from drray.evaluate.map_scores import disc_mask
    from drray.inference import Predictor
    from drray.models.model import load_model
    from drray.rundir import RunDir

    rows = sample_rows(manifest, cam.sanity_images, seed)
    if rows.empty or not methods:
        return None
    trained = load_model(model_dir)
    prep = trained.card.preprocess_config()
    decoded, kept = [], []
    for _, r in rows.iterrows():
        masks = {c[len("mask_"):]: r[c] for c in MASK_COLUMNS if c in rows.columns and isinstance(r[c], str)}
        d = decode_record(r["path"], prep, masks, max_pixels)
        if not d.error_reason:
            decoded.append(d)
            kept.append(r)
    if not decoded:
        return None
    images = np.stack([d.image for d in decoded])
    blocks = cascade_blocks(trained)
    steps = [("trained", 0)] + [(label, k) for k, (label, _) in enumerate(blocks, start=1)]
    reference: dict[str, np.ndarray] = {}
    cols: dict[str, list] = {name: [] for name in RANDOMISATION_SCHEMA.names}
    for label, k in steps:
        model = trained if k == 0 else randomised_copy(trained, k, seed=seed)
        predictor = Predictor(model, methods=list(methods), cam=cam, device="cpu", max_pixels=max_pixels)
        out_k = predictor.explain(images)
        reinit = ",".join(name for name, _ in blocks[:k])
        for m in methods:
            maps = out_k.maps[m]
            if k == 0:
                reference[m] = maps
            for i, (d, r) in enumerate(zip(decoded, kept)):
                g = d.geometry
                fov = disc_mask(g["fov_cy"], g["fov_cx"], g["fov_r"], maps.shape[1]) if g["quality_ok"] else None
                scores = predictor.score_map(maps[i], d.masks, (g["box_y0"], g["box_x0"], g["box_side"]),
                                             (g["orig_h"], g["orig_w"]), fov)
                label_value = r["label"]
                cols["image_id"].append(str(r["image_id"]))
                cols["dataset"].append(str(r["dataset"]))
                cols["split"].append(None if pd.isna(r.get("split")) else str(r["split"]))
                cols["label"].append(None if pd.isna(label_value) else int(label_value))
                cols["model_id"].append(trained.card.model_id)
                cols["cam_method"].append(m)
                cols["cascade"].append(k)
                cols["reinitialised"].append(reinit)
                corr = rank_correlation(reference[m][i], maps[i])
                cols["rank_corr"].append(None if np.isnan(corr) else corr)
                cols["pointing_hit"].append(scores["pointing_hit"])
                cols["chance_hit"].append(scores["chance_hit"])
                cols["energy_in_lesions"].append(scores["energy_in_lesions"])
        predictor.close()
        log.info("randomisation check: %s done (%d images)", label if k else "trained model", len(decoded))
    table = pa.Table.from_pydict(cols, schema=RANDOMISATION_SCHEMA)
    path = RunDir(out).randomisation
    storage.write_parquet(path, table)
    df = table.to_pandas()
    means = df.groupby("cascade")["rank_corr"].mean()
    return SanityResult(path, len(decoded), [label for label, _ in steps],
                        {label: float(means.get(k, np.nan)) for label, k in steps})
