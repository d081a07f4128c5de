"""Confirming a suspect strategy by intervention: its photographs predicted again with its place removed, and a control.

A strategy whose maps share one place is only a suspicion: maps show where the gradient is, not
what the decision needs. The test is causal: remove that place from each member photograph and
predict again. If the model relied on it (a shortcut), predictions change; removing a region of
the same size elsewhere (`drray.audit.strategies.control_place`: the place turned about the
frame's centre, so as far from it) is the control, and should change far fewer. A strategy is
`confirmed` when the place changes at least `audit.confirm_min_change` more of its predictions
than the control does, and `audit.confirm_ratio` times as many.

Regions are the place's grid cells grown by one cell (an artefact need not sit inside the cells
its map peaks on), mirrored back for left eyes where the place is in the fundus frame (the
right-eye frame), and drawn on the network input; `inpaint` fills them from the surrounding pixels (OpenCV's Telea method),
`blur` replaces them with a strong blur of the photograph. Ray Data decodes the members'
photographs in tasks and one predictor actor predicts the three versions of each batch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from drray import storage
from drray.audit.strategies import STRATEGY_COLUMNS
from drray.config.audit import AuditConfig
from drray.rundir import RunDir
from drray.schema import REFERABLE_THRESHOLD
from drray.scores.descriptors import GRID, is_left

log = logging.getLogger(__name__)


def region_mask(place: np.ndarray, size: int, left: bool, grow: int = 1, grid: int = GRID) -> np.ndarray:
    """(size, size) bool on the network input: the place's cells (mirrored frame) grown by `grow` cells."""
    import cv2

    cells = np.asarray(place, dtype=bool).reshape(grid, grid).astype(np.uint8)
    if grow:
        cells = cv2.dilate(cells, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    if left:
        cells = cells[:, ::-1]
    return cv2.resize(np.ascontiguousarray(cells), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


def remove_region(image: np.ndarray, region: np.ndarray, how: str = "inpaint") -> np.ndarray:
    """(S, S, 3) uint8 with `region` filled from its surroundings (inpaint) or blurred away (blur)."""
    import cv2

    if not region.any():
        return image.copy()
    mask = region.astype(np.uint8)
    if how == "inpaint":
        return cv2.inpaint(np.ascontiguousarray(image), mask, 5, cv2.INPAINT_TELEA)
    if how == "blur":
        sigma = max(image.shape[0] / 16.0, 2.0)
        blurred = cv2.GaussianBlur(image, (0, 0), sigma)
        return np.where(region[..., None], blurred, image)
    raise ValueError(f"unknown intervention {how!r}; choose inpaint or blur")


class Intervener:
    """Ray Data actor: decoded member photographs -> their predictions as they are, place removed, control removed."""

    def __init__(self, model: Any, places: dict[str, tuple[np.ndarray, np.ndarray, str]], how: str,
                 torch_threads: int | None = 1):
        import ray
        import torch

        from drray.inference import Predictor

        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.predictor = Predictor.from_model_dir(model, methods=())
        self.places = places
        self.how = how

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        n = len(batch["image_id"])
        size = batch["image"].shape[1] if n else 0
        good = [i for i in range(n) if not batch["error_reason"][i]]
        rows = [self._row(batch, i) for i in range(n)]
        for i in range(n):
            if batch["error_reason"][i]:
                rows[i]["error"] = f"{batch['error_reason'][i]}: {batch['error_detail'][i]}"
        if good:
            images = [batch["image"][i] for i in good]
            removed, control, areas = [], [], []
            for i in good:
                place, ctrl, frame = self.places[str(batch["strategy"][i])]
                # Fundus-frame places are in the right-eye frame; camera-frame places are as photographed.
                left = frame == "fundus" and "eye" in batch and is_left(batch["eye"][i])
                r, c = region_mask(place, size, left), region_mask(ctrl, size, left)
                removed.append(remove_region(batch["image"][i], r, self.how))
                control.append(remove_region(batch["image"][i], c, self.how))
                areas.append(float(r.mean()))
            out = self.predictor.predict(np.stack(images + removed + control))
            m = len(good)
            for j, i in enumerate(good):
                rows[i].update(pred=int(out.preds[j]), pred_removed=int(out.preds[m + j]),
                               pred_control=int(out.preds[2 * m + j]),
                               referable_prob=float(out.referable_prob[j]),
                               referable_prob_removed=float(out.referable_prob[m + j]),
                               referable_prob_control=float(out.referable_prob[2 * m + j]),
                               region_area=areas[j])
        return pd.DataFrame(rows)

    @staticmethod
    def _row(batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        label = int(batch["label"][i])
        return {"strategy": str(batch["strategy"][i]), "image_id": str(batch["image_id"][i]),
                "dataset": str(batch["dataset"][i]), "split": batch["split"][i],
                "label": label if label >= 0 else None, "error": None}


def members(run: RunDir, strategies: pd.DataFrame, cap: int | None) -> pd.DataFrame:
    """(image_id, dataset, split, strategy) of each suspect strategy's members, from strategy_of.parquet."""
    import pyarrow.dataset as pads

    fs, path = storage.filesystem(run.strategy_of)
    ds = pads.dataset(path, filesystem=fs, format="parquet")
    parts = []
    for _, s in strategies.iterrows():
        column = STRATEGY_COLUMNS[(s["frame"], s["grouping"])]
        flt = (pads.field(column) == s["strategy"]) & (pads.field("model_id") == s["model_id"])
        df = ds.to_table(columns=["image_id", "dataset", "split"], filter=flt).to_pandas()
        df = df.drop_duplicates("image_id").sort_values("image_id", kind="stable")
        if cap is not None:
            df = df.head(cap)
        parts.append(df.assign(strategy=s["strategy"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["image_id", "strategy"])


def intervene_on(run: RunDir, suspects: pd.DataFrame, cfg: AuditConfig, *, model_dir: str, manifest: str,
                 max_pixels: int | None = None, decode_cpus: float = 0.5) -> pd.DataFrame:
    """Predict every suspect strategy's photographs as they are, with the place removed and with the control removed."""
    import ray

    from drray.audit.strategies import control_place
    from drray.cluster import connect
    from drray.data.dataset import build_dataset, load_manifest
    from drray.explain.sample import absolute_paths
    from drray.data.images import DEFAULT_MAX_PIXELS
    from drray.models.card import read_card
    from drray.models.model import read_model_files
    from drray.schema import INTERVENTIONS_SCHEMA

    connect()
    who = members(run, suspects, cfg.max_intervention_images)
    rows = absolute_paths(load_manifest(manifest), manifest)
    rows = rows.drop(columns=["split", "dataset"]).merge(who, on="image_id", how="inner")
    missing = sorted(set(who["image_id"]) - set(rows["image_id"]))
    if missing:
        log.warning("audit: %d suspect images are not in the manifest %s (e.g. %s); not predicted again",
                    len(missing), manifest, missing[0])
    if rows.empty:
        return pd.DataFrame(columns=INTERVENTIONS_SCHEMA.names)
    places = {}
    for _, s in suspects.iterrows():
        place = np.unpackbits(np.frombuffer(s["place_cells"], dtype=np.uint8))[:GRID * GRID].astype(bool)
        places[s["strategy"]] = (place, control_place(place), s["frame"])
    card = read_card(model_dir)
    # The strategy rides with each row through decoding (it is not a manifest column decode keeps).
    rows["image_id"] = rows["image_id"] + "\x00" + rows["strategy"]
    ds = build_dataset(rows, card.preprocess_config(), max_pixels=max_pixels or DEFAULT_MAX_PIXELS, batch_size=cfg.batch_size,
                       num_cpus=decode_cpus)
    ds = ds.map_batches(_split_key, batch_format="numpy", batch_size=cfg.batch_size, num_cpus=decode_cpus)
    model = ray.put(read_model_files(model_dir))
    ds = ds.map_batches(Intervener, fn_constructor_kwargs={"model": model, "places": places, "how": cfg.intervention},
                        batch_format="numpy", batch_size=cfg.batch_size, concurrency=1, num_cpus=0.5)
    out = pd.concat(list(ds.iter_batches(batch_format="pandas", batch_size=None)), ignore_index=True) \
        if len(rows) else pd.DataFrame()
    return out.reindex(columns=INTERVENTIONS_SCHEMA.names)


def _split_key(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keys = [str(k).split("\x00", 1) for k in batch["image_id"]]
    batch["image_id"] = np.asarray([k[0] for k in keys], dtype=object)
    batch["strategy"] = np.asarray([k[1] for k in keys], dtype=object)
    return batch


def confirm(strategies: pd.DataFrame, interventions: pd.DataFrame, cfg: AuditConfig) -> pd.DataFrame:
    """Add each suspect strategy's intervention figures and its `confirmed` verdict (the module docstring's rule)."""
    out = strategies.copy()
    ok = interventions[interventions["error"].isna() & interventions["pred"].notna()]
    for idx, s in out[out["verdict"] == "suspect"].iterrows():
        r = ok[ok["strategy"] == s["strategy"]]
        if r.empty:
            continue
        thr = REFERABLE_THRESHOLD
        changed_removed = float((r["pred_removed"] != r["pred"]).mean())
        changed_control = float((r["pred_control"] != r["pred"]).mean())
        ref = r["referable_prob"] >= thr
        out.loc[idx, "intervened"] = len(r)
        out.loc[idx, "changed_removed"] = changed_removed
        out.loc[idx, "changed_control"] = changed_control
        out.loc[idx, "flips_removed"] = float(((r["referable_prob_removed"] >= thr) != ref).mean())
        out.loc[idx, "flips_control"] = float(((r["referable_prob_control"] >= thr) != ref).mean())
        out.loc[idx, "confirmed"] = bool(changed_removed - changed_control >= cfg.confirm_min_change
                                         and changed_removed >= cfg.confirm_ratio * changed_control)
    return out
