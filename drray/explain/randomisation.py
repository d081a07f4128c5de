"""The model-randomisation sanity check of a run (Adebayo et al. 2018), into RUN/randomisation.parquet.

A sample of the explained images (lesion images first, where the manifest has masks) is explained
again by copies of the model whose top blocks are re-initialised, cascading from the head down to
the first stage (drray.cam.sanity), each step drawn `explain.sanity_draws` times with different seeds:
one random network is one fixed function whose maps peak wherever its weights happen to favour, so
its hit rate swings from seed to seed (benchmarks/README.md measures how far on the demo model), and
only the mean over draws estimates what random weights score. Per image, method and step it stores
the rank correlation of
the copy's map with the trained model's, and the copy's pointing hit, chance rate and energy in
lesions: maps that explain the model fall away from the trained ones as the cascade deepens, and
with every block random their hit rate falls to chance. Random networks often give empty maps (no
peak); `expected_hit` scores those at the image's chance rate, as a peak drawn among the tied pixels
would score, so "no evidence" does not read as "below chance". `drray evaluate` reports it beside the
trained model's figures.

The sample is small (explain.sanity_images, default 64) and runs in the driver's process: a few model
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

from drray.config import CamConfig, ExplainConfig
from drray.data.images import DEFAULT_MAX_PIXELS
from drray.schema import RANDOMISATION_SCHEMA

log = logging.getLogger(__name__)


def expected_hit(hit: bool | None, chance: float | None, empty: bool) -> float | None:
    """The pointing game with ties broken at random: 1/0 for a map's peak, the image's chance rate for an
    empty map (all of whose pixels tie); None where the image has nothing to point at."""
    if hit is None:
        return None
    if empty:
        return chance
    return float(hit)


@dataclass
class SanityResult:
    """What the check wrote: the table's location, its size, and the mean rank correlation per step."""

    path: str
    images: int
    steps: list[str]
    mean_rank_corr: dict[str, float]


def randomisation_check(manifest: pd.DataFrame, model_dir, out: str | os.PathLike, *, methods: Sequence[str],
                        cam: CamConfig, job: ExplainConfig | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                        seed: int = 0) -> SanityResult | None:
    """Explain a sample of `manifest` (paths already absolute) with the trained model and its cascade of
    re-initialised copies; write OUT/randomisation.parquet. None when there is nothing to check.

    cam: what the maps are; job: the sample's size and the draws per step (`explain.sanity_*`).
    """
    from drray import storage
    from drray.cam.sanity import cascade_blocks, randomised_copy
    from drray.explain.sample import decode_sample, sample_rows
    from drray.scores.localisation import rank_correlation
    from drray.inference import Predictor
    from drray.models.model import load_model
    from drray.rundir import RunDir

    job = job or ExplainConfig()
    rows = sample_rows(manifest, job.sanity_images, seed)
    if rows.empty or not methods:
        return None
    trained = load_model(model_dir)
    sample = decode_sample(rows, trained.card.preprocess_config(), max_pixels)
    if not len(sample):
        return None
    geometries, masks = sample.geometries, sample.masks
    # Maps are compared inside the fundus, where they are scored: the shared zeros outside are no agreement.
    fields = [g.field_mask(sample.images.shape[1]) for g in geometries]
    blocks = cascade_blocks(trained)
    steps = [("trained", 0)] + [(label, k) for k, (label, _) in enumerate(blocks, start=1)]
    runs = [(label, k, draw) for label, k in steps for draw in (range(job.sanity_draws) if k else [0])]
    reference: dict[str, np.ndarray] = {}
    cols: dict[str, list] = {name: [] for name in RANDOMISATION_SCHEMA.names}
    for label, k, draw in runs:
        model = trained if k == 0 else randomised_copy(trained, k, seed=seed + draw)
        predictor = Predictor(model, methods=list(methods), cam=cam, device="cpu", max_pixels=max_pixels)
        out_k = predictor.explain(sample.images)
        reinit = ",".join(name for name, _ in blocks[:k])
        for m in methods:
            scored = predictor.score_maps(out_k.maps[m], geometries, masks)
            maps = [sm.cam for sm in scored]
            if k == 0:
                reference[m] = maps
            for i, r in enumerate(sample.rows):
                scores = scored[i].columns
                label_value = r["label"]
                cols["image_id"].append(str(r["image_id"]))
                cols["dataset"].append(str(r["dataset"]))
                cols["split"].append(None if pd.isna(r.get("split")) else str(r["split"]))
                cols["label"].append(None if pd.isna(label_value) else int(label_value))
                cols["model_id"].append(trained.card.model_id)
                cols["cam_method"].append(m)
                cols["cascade"].append(k)
                cols["draw"].append(draw)
                cols["reinitialised"].append(reinit)
                inside = fields[i] if fields[i] is not None else slice(None)
                corr = rank_correlation(reference[m][i][inside], maps[i][inside])
                cols["rank_corr"].append(None if np.isnan(corr) else corr)
                cols["pointing_hit"].append(scores["pointing_hit"])
                cols["chance_hit"].append(scores["chance_hit"])
                empty = not bool((maps[i] > 0).any())
                cols["empty_map"].append(empty)
                cols["expected_hit"].append(expected_hit(scores["pointing_hit"], scores["chance_hit"], empty))
                cols["energy_in_lesions"].append(scores["energy_in_lesions"])
        predictor.close()
        log.info("randomisation check: %s done (draw %d, %d images)", label if k else "trained model", draw,
                 len(sample))
    table = pa.Table.from_pydict(cols, schema=RANDOMISATION_SCHEMA)
    path = RunDir(out).randomisation
    storage.write_parquet(path, table)
    df = table.to_pandas()
    means = df.groupby("cascade")["rank_corr"].mean()
    return SanityResult(path, len(sample), [label for label, _ in steps],
                        {label: float(means.get(k, np.nan)) for label, k in steps})
