"""Choose a model's CAM target layer and method by measured localisation, and write the choice into its card.

Where a dataset has lesion masks (drray's synthetic set, IDRiD, DDR), the lesion images of a held-out
split (validation by default) are explained at every resolution the model has (drray.cam.target_layers:
stride 8, 16, 32; a transformer has one token grid) and at each pair of neighbouring resolutions fused
(`layer2+layer3`: the two maps multiplied, from the same pass), with every candidate method, and each
map is scored as the explanation table scores it (the pointing game inside the fundus, energy in lesions).
The (stride, method) with the highest pointing-game hit rate wins; rates within one binomial standard
error of the best (the plus-four estimate, which does not vanish at a perfect score) count as ties,
which go to the higher energy lift (mean energy in lesions / mean lesion area share), then to the
earlier candidate (finer strides first; methods in the order given). The card gets `cam_target_layer`,
`cam_target_stride`, `cam_method` and `cam_selection` (every candidate's scores and the split they
were measured on), so `drray explain`, `drray serve` and `drray.explain_image` use the choice without
being told.

    selection = select_cam_target("runs/demo/manifest.parquet", "runs/demo/model")
    selection.method, selection.stride, selection.layer, selection.table()

Fast methods share one forward and one backward pass per stride, so the whole search costs one
explanation pass per stride over the sample.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from drray.config import CamConfig, ExplainConfig
from drray.data.images import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

MIN_IMAGES = 10
"""Fewer lesion images than this and no choice is made: a hit rate over a handful says nothing."""


class NotEnoughMasks(ValueError):
    """The split has too few readable images with lesion masks to choose a layer on."""


@dataclass
class Candidate:
    """One (stride, method) and how its maps scored on the sample."""

    stride: int | None
    layer: str
    method: str
    images: int
    hit_rate: float
    energy_in_lesions: float
    lesion_area: float
    chance_hit: float

    @property
    def fused(self) -> bool:
        """Several layers' maps multiplied into one (drray.cam.maps.fuse_maps)."""
        from drray.cam.target_layers import FUSE_SEP

        return FUSE_SEP in self.layer

    @property
    def lift(self) -> float:
        return self.energy_in_lesions / self.lesion_area if self.lesion_area > 0 else float("nan")


@dataclass
class CamSelection:
    """The chosen layer and method, and every candidate's scores."""

    split: str
    images: int
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    @property
    def method(self) -> str:
        return self.best.method

    @property
    def stride(self) -> int | None:
        return self.best.stride

    @property
    def layer(self) -> str:
        return self.best.layer

    def summary(self) -> str:
        b = self.best
        where = f"{b.layer} fused (finest stride {b.stride})" if b.fused else f"stride {b.stride} ({b.layer})"
        return (f"CAM layer: {b.method} at {where}, pointing game {b.hit_rate:.3f} "
                f"(chance {b.chance_hit:.3f}), lift {b.lift:.1f} on {self.images} {self.split} images with lesions")

    def table(self) -> pd.DataFrame:
        """One row per candidate, best first."""
        return pd.DataFrame([{**dataclasses.asdict(c), "lift": c.lift} for c in self.candidates])

    def card_entry(self) -> dict[str, Any]:
        """What model.json records under `cam_selection`."""
        return {"split": self.split, "images": self.images,
                "criterion": "pointing_hit_rate (within one standard error: a tie), then lift",
                "candidates": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                               for row in self.table().to_dict("records")]}


def hit_rate_standard_error(rate: float, images: int) -> float:
    """Standard error of a hit rate over `images` images, by the plus-four (Agresti-Coull) estimate.

    The plain sqrt(p (1 - p) / n) is 0 at a perfect score, which would make 77 of 77 differ from 76
    of 77; adding two hits and two misses keeps the spread that a finite sample has (0.017 there).
    """
    n = images + 4
    p = (rate * images + 2) / n
    return math.sqrt(p * (1 - p) / n)


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Best first: the highest hit rate, where rates within one binomial standard error of the best count as
    a tie (the one-standard-error rule: on ~100 images two hit rates 0.03 apart are not told apart), broken by
    the higher lift; the rest by hit rate, then lift; then the order given. NaN scores go last."""
    order = {id(c): i for i, c in enumerate(candidates)}

    def finite(x: float) -> float:
        return x if np.isfinite(x) else -np.inf

    def key(c: Candidate):
        return (-finite(c.hit_rate), -finite(c.lift), order[id(c)])

    ranked = sorted(candidates, key=key)
    if not ranked or not np.isfinite(ranked[0].hit_rate) or ranked[0].images < 1:
        return ranked
    top = ranked[0]
    band = top.hit_rate - hit_rate_standard_error(top.hit_rate, top.images)
    tied = [c for c in ranked if finite(c.hit_rate) >= band]
    tied.sort(key=lambda c: (-finite(c.lift), -finite(c.hit_rate), order[id(c)]))
    return tied + [c for c in ranked if finite(c.hit_rate) < band]


def select_cam_target(manifest: str | os.PathLike | pd.DataFrame, model_dir: str | os.PathLike, *,
                      split: str | None = "val", methods: Sequence[str] | None = None,
                      strides: Sequence[int] | None = None, cam: CamConfig | None = None,
                      job: ExplainConfig | None = None, max_images: int = 256,
                      max_pixels: int = DEFAULT_MAX_PIXELS, seed: int = 0, write: bool = True) -> CamSelection:
    """Score every (target layer, method) on the lesion images of `split` and write the best into the model card.

    split: the split scored (None: every row). methods: candidate CAM methods (default
    `explain.select_methods`); strides: default every configurable stride (8, 16, 32) the model has.
    cam: how maps are scored (pointing tolerance); job: `select_methods`, `select_fused` and the batch size.
    Each stride is tried alone and, with `explain.select_fused`, fused with its neighbour. max_images:
    lesion images used at most (drawn with `seed`). write: rewrite MODEL_DIR/model.json with the
    choice (the weights are untouched). Runs in this process, on its GPU where it has one.
    Raises NotEnoughMasks (a ValueError) when the split has fewer than MIN_IMAGES readable images with
    lesion masks.
    """
    from drray.cam.methods import get_method
    from drray.cam.target_layers import CAM_STRIDES, fused_name, stride_layers
    from drray.data.dataset import load_manifest
    from drray.explain.sample import absolute_paths, decode_sample, has_lesion_mask
    from drray.inference import Predictor
    from drray.models.model import load_model

    cam = cam or CamConfig()
    job = job or ExplainConfig()
    names = [get_method(m).name for m in (methods or job.select_methods)]
    slow = [m for m in names if not get_method(m).fast]
    if slow:
        raise ValueError(f"layer selection scores fast CAM methods only; {', '.join(slow)} would take a pass per image")
    df = load_manifest(manifest, split)
    lesions = df[has_lesion_mask(df)]
    if len(lesions) > max_images:
        lesions = lesions.sample(n=max_images, random_state=seed)
    model = load_model(model_dir)
    sample = decode_sample(absolute_paths(lesions.reset_index(drop=True), manifest), model.card.preprocess_config(),
                           max_pixels)
    if len(sample) < MIN_IMAGES:
        where = f"split {split!r} of {manifest}" if split else str(manifest)
        raise NotEnoughMasks(f"{where} has {len(sample)} readable images with lesion masks; choosing a CAM layer "
                             f"needs at least {MIN_IMAGES} (a dataset with masks: synth, idrid, ddr)")
    available = stride_layers(model.backbone, model.card.input_size)
    if strides is None:  # the configurable strides; a transformer's one token grid
        wanted = [s for s in available if s in CAM_STRIDES] or list(available)[-1:]
    else:
        wanted = [int(s) for s in strides]
        if any(s not in CAM_STRIDES for s in wanted):
            raise ValueError(f"strides to choose from are among {CAM_STRIDES}, got {wanted}")
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ValueError(f"{model.card.timm_name} has no CAM layer at stride {missing}; it has {sorted(available)}")
    # Each stride alone, then (explain.select_fused) each pair of neighbouring strides fused into one map.
    targets = [dict(target_layer=None, target_stride=s) for s in wanted]
    if job.select_fused:
        targets += [dict(target_layer=fused_name([available[a][0], available[b][0]]), target_stride=None)
                    for a, b in zip(wanted, wanted[1:])]
    geometries, masks = sample.geometries, sample.masks
    candidates = []
    for target in targets:
        predictor = Predictor(model, methods=names, cam=dataclasses.replace(cam, **target), max_pixels=max_pixels)
        out = _explain_in_batches(predictor, sample.images, job.batch_size)
        for m in names:
            scores = [s.columns for s in predictor.score_maps(out[m], geometries, masks)]
            candidates.append(_candidate(predictor.engine.target_stride, predictor.target_layer, m, scores))
        predictor.close()
    selection = CamSelection(split or "all", len(sample), rank(candidates))
    log.info("CAM layer selection on %d %s images: %s", len(sample), selection.split, selection.summary())
    if write:
        write_selection(model_dir, selection)
    return selection


def _explain_in_batches(predictor, images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(images), batch):
        for m, maps in predictor.explain(images[i:i + batch]).maps.items():
            parts.setdefault(m, []).append(maps)
    return {m: np.concatenate(p) for m, p in parts.items()}


def _candidate(stride: int, layer: str, method: str, scores: list[dict[str, Any]]) -> Candidate:
    def mean(key: str) -> float:
        v = np.array([s[key] for s in scores if s[key] is not None], dtype=np.float64)
        return float(v.mean()) if v.size else float("nan")

    hits = [bool(s["pointing_hit"]) for s in scores if s["pointing_hit"] is not None]
    return Candidate(stride=stride, layer=layer, method=method, images=len(hits),
                     hit_rate=float(np.mean(hits)) if hits else float("nan"),
                     energy_in_lesions=mean("energy_in_lesions"), lesion_area=mean("lesion_area"),
                     chance_hit=mean("chance_hit"))


def write_selection(model_dir: str | os.PathLike, selection: CamSelection) -> None:
    """Rewrite MODEL_DIR/model.json with the chosen layer, stride and method (weights untouched)."""
    from drray.cam.target_layers import FUSE_SEP, fused_name, inside_backbone
    from drray.models.card import read_card, write_card

    card = read_card(model_dir)
    layer = fused_name([inside_backbone(n) for n in selection.layer.split(FUSE_SEP)])
    card = dataclasses.replace(card, cam_target_layer=layer, cam_target_stride=selection.stride,
                               cam_method=selection.method, cam_selection=selection.card_entry())
    write_card(model_dir, card)
