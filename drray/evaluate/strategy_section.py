"""The report's "What the model looks at" section, from strategies.parquet and strategy_of.parquet (`drray audit`).

Each strategy is shown as its centroid map over a mean fundus (the mean of a few of the run's
photographs cropped as the model sees them, left eyes mirrored like the grids), a few members'
overlays (a seeded sample, never picked by hand), its figures inside vs outside it and its verdict
with the rule's reason; suspect strategies add what removing their place did.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
import pandas as pd

from drray import storage
from drray.rundir import RunDir

log = logging.getLogger(__name__)

MEAN_FUNDUS_PHOTOS = 24
MEMBERS_SHOWN = 4
SIZE = 128


def _order(ids: pd.Series) -> pd.Series:
    """A seeded, stable shuffle of image ids: the first few are a sample no one chose."""
    return ids.map(lambda i: hashlib.sha1(f"drray:{i}".encode()).hexdigest())


def mean_fundus(run: RunDir, manifest: pd.DataFrame | None, image_ids: list[str], cfg, eyes: dict[str, Any]) -> np.ndarray | None:
    """(SIZE, SIZE, 3) uint8: the mean colour crop of up to MEAN_FUNDUS_PHOTOS photographs, left eyes mirrored."""
    import cv2

    from drray.data.decode import decode_record
    from drray.evaluate.photos import photo_location
    from drray.scores.descriptors import is_left

    if manifest is None:
        return None
    acc, n = np.zeros((SIZE, SIZE, 3), np.float64), 0
    for iid in image_ids:
        if iid not in manifest.index or n >= MEAN_FUNDUS_PHOTOS:
            continue
        d = decode_record(photo_location(str(manifest.loc[iid, "path"]), run.root), cfg)
        if d.error_reason:
            continue
        colour = d.colour if d.colour is not None else d.image
        img = cv2.resize(colour, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float64)
        acc += img[:, ::-1] if is_left(eyes.get(iid)) else img
        n += 1
    return (acc / n).astype(np.uint8) if n else None


def strategies_context(run_dir: str, manifest: pd.DataFrame | None, cfg) -> dict[str, Any] | None:
    """The section's content (PNGs as bytes: the report inlines them), or None when the run has not been audited."""
    from drray.cam.overlay import blend
    from drray.evaluate.query import open_table
    from drray.evaluate.tables import read_overlays
    from drray.scores.descriptors import GRID

    run = RunDir(run_dir)
    if not storage.is_file(run.strategies):
        return None
    strategies = storage.read_parquet(run.strategies).to_pandas()
    of = open_table(run.strategy_of, partitioned=False)
    members = of.to_table().to_pandas() if of is not None else pd.DataFrame(columns=["image_id", "strategy"])
    eyes = {}
    if manifest is not None and "eye" in manifest.columns:
        eyes = manifest["eye"].to_dict()
    ids = members.drop_duplicates("image_id")
    ids = ids.iloc[np.argsort(_order(ids["image_id"]).to_numpy(), kind="stable")]["image_id"].tolist()
    background = mean_fundus(run, manifest, ids, cfg, eyes)
    sections = []
    for grouping, title in (("grade", "By predicted grade"), ("referable", "Referable vs not referable")):
        rows = []
        for _, s in strategies[strategies["grouping"] == grouping].iterrows():
            centroid = np.frombuffer(s["centroid"], dtype=np.float16).reshape(GRID, GRID).astype(np.float32)
            top = float(centroid.max())
            picture = s["centroid_png"]
            if background is not None and top > 0:
                from drray.cam.overlay import encode_png

                picture = encode_png(blend(background, centroid / top, SIZE, 0.5))
            column = "strategy" if grouping == "grade" else "referable_strategy"
            m = members[(members[column] == s["strategy"]) & (members["cam_method"] == s["cam_method"])]
            m = m.iloc[np.argsort(_order(m["image_id"]).to_numpy(), kind="stable")].head(MEMBERS_SHOWN)
            overlays = read_overlays(run.explanations, s["cam_method"], m["image_id"].tolist())
            rows.append({**{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in s.items()
                            if k not in ("centroid", "centroid_png", "place_cells")},
                         "centroid_png": picture,
                         "members": [{"image_id": i, "overlay_png": overlays.get(i)}
                                     for i in m["image_id"]]})
        if rows:
            sections.append({"title": title, "rows": rows})
    n_suspect = int((strategies["verdict"] == "suspect").sum())
    return {"sections": sections, "suspects": n_suspect,
            "confirmed": int(strategies["confirmed"].fillna(False).astype(bool).sum()),
            "rule": None if strategies.empty else strategies["rule"].iloc[0]}
