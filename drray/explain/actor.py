"""The stateful `map_batches` callable of `drray explain`: decoded images -> explanation rows and error rows.

An `Explainer` lives in a Ray actor: it loads the model and opens its CAM engine once, in
`__init__`, then turns each batch of decoded rows (`drray.data.dataset.decode_batch`) into one row per
image and method (`EXPLANATION_ROW_SCHEMA`); the fast methods share one forward and one backward
pass per batch. Images that could not be read, or that the model
failed on, become error rows (`reason` set) in the same output, so the sink writes both tables
from one stream and no image is lost between them.

Masks are compared at the preprocessed image's resolution: the engine upsamples each map to the
network input (S x S) and the lesion masks were warped to that grid with the image, so a
one-pixel microaneurysm still counts. The stored map is that map shrunk to `cam_size` (area
average) as float16; `cam_entropy` is measured on the stored map, so anyone can recompute it
(drray.evaluate.localisation.entropy: the map as a distribution, entropy / log(h*w), in [0, 1]).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from drray.config import CamConfig
from drray.evaluate.localisation import energy_share, entropy, peak, pointing_hit
from drray.cam.overlay import overlay_png
from drray.schema import ERRORS_SCHEMA, EXPLANATIONS_SCHEMA, LESION_TYPES, OPTIC_DISC, REFERABLE_MIN_GRADE, Reason

log = logging.getLogger(__name__)

# Columns drray adds to the explanations table of the design (tables may gain columns).
EXTRA_EXPLANATION_FIELDS = [
    pa.field("road_score", pa.float32()),  # ROAD faithfulness (cam.faithfulness), null when off
    pa.field("quality_ok", pa.bool_()),  # False: no fundus found, a centre crop was explained
]
EXPLANATION_ROW_SCHEMA = pa.schema(list(EXPLANATIONS_SCHEMA) + EXTRA_EXPLANATION_FIELDS)
"""The explanations table as `drray explain` writes it (partition columns dataset and split included)."""

# The errors table with the keys that make a rerun skip what already failed.
ERROR_ROW_SCHEMA = pa.schema(
    list(ERRORS_SCHEMA)
    + [pa.field(c, pa.string()) for c in ("image_id", "dataset", "split", "model_id", "cam_method")]
)
ROW_SCHEMA = pa.schema(
    list(EXPLANATION_ROW_SCHEMA)
    + [pa.field(c, pa.string()) for c in ("source", "stage", "reason", "detail")]
)
"""What an Explainer returns: explanation rows, and error rows where `reason` is not null."""

ROAD_PERCENTILES = (20, 40, 60, 80)
STAGE_OF_REASON = {Reason.MISSING_FILE: "read", Reason.EMPTY_FILE: "read", Reason.EXPLAIN_FAILED: "explain"}
LATENCY_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def shrink_map(cam: np.ndarray, size: int) -> np.ndarray:
    """(H, W) map -> (size, size) float32 by area averaging (bilinear when enlarging)."""
    import cv2

    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape == (size, size):
        return cam
    interp = cv2.INTER_AREA if cam.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(cam, (size, size), interpolation=interp)


def map_scores(
    cam: np.ndarray,
    mask_bits: np.ndarray | None,
    box: tuple[int, int, int],
    orig_shape: tuple[int, int],
    cam_size: int,
    tolerance: float,
) -> dict[str, Any]:
    """Columns of one explanation row that depend on the map: stored map, peak, entropy, lesion scores.

    cam: (S, S) map in [0, 1] on the preprocessed image's grid.
    mask_bits: (S, S) uint8 lesion bits (`drray.data.dataset.mask_bits`) on the same grid, or None.
    box: the crop box (y0, x0, side) in original pixels, from the decode step.
    orig_shape: (H, W) of the original photograph.
    tolerance: pointing-game tolerance as a share of S.
    Lesion scores are null where the image has no pixel of that type (no mask, or an empty one):
    there is nothing to point at, and a share of 0 would only restate the absence.
    """
    from drray.data.dataset import unpack_mask
    from drray.data.preprocess import CropBox, box_to_image_coords

    side = cam.shape[0]
    small = shrink_map(cam, cam_size)
    p = peak(cam)
    if p is None or box[2] <= 0:
        peak_y = peak_x = None
    else:
        peak_y, peak_x = box_to_image_coords(p[0], p[1], CropBox(*box), side, orig_shape)
    row: dict[str, Any] = {
        "cam": small.astype(np.float16).tobytes(),
        "cam_h": cam_size,
        "cam_w": cam_size,
        "peak_y": peak_y,
        "peak_x": peak_x,
        "cam_entropy": _finite_or_none(entropy(small)),
        "pointing_hit": None,
        "energy_in_lesions": None,
        "od_energy": None,
        **{f"energy_{t}": None for t in LESION_TYPES},
    }
    if mask_bits is None:
        return row
    lesions = unpack_mask(mask_bits, LESION_TYPES)
    if lesions.any():
        row["pointing_hit"] = pointing_hit(cam, lesions, tolerance * side)
        row["energy_in_lesions"] = _finite_or_none(energy_share(cam, lesions))
    for t in LESION_TYPES + (OPTIC_DISC,):
        m = unpack_mask(mask_bits, t)
        if m.any():
            row["od_energy" if t == OPTIC_DISC else f"energy_{t}"] = _finite_or_none(energy_share(cam, m))
    return row


class _Rows:
    """Column lists for one output block."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in ROW_SCHEMA.names}

    def add(self, values: dict[str, Any]) -> None:
        for name, col in self.cols.items():
            col.append(values.get(name))

    def to_table(self) -> pa.Table:
        return pa.Table.from_pydict(self.cols, schema=ROW_SCHEMA)


def _image_fields(batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    label = int(batch["label"][i])
    return {
        "image_id": str(batch["image_id"][i]),
        "dataset": str(batch["dataset"][i]),
        "split": None if batch["split"][i] is None else str(batch["split"][i]),
        "label": label if label >= 0 else None,
        "quality_ok": bool(batch["quality_ok"][i]),
    }


class Explainer:
    """Model + CAM engines in one actor: `__call__(batch) -> pa.Table` of `ROW_SCHEMA` rows.

    methods: CAM methods to run on every image; empty means predict only (one row per image,
    cam_method and the map columns null).
    """

    def __init__(self, model_dir: str, methods: Sequence[str], cam: CamConfig):
        import torch

        from drray.cam import CamEngine
        from drray.models.model import load_model

        if cam.gpus_per_actor > 0 and not torch.cuda.is_available():
            raise RuntimeError(
                f"cam.gpus_per_actor={cam.gpus_per_actor} but this actor sees no CUDA device; "
                "set cam.gpus_per_actor=0 to explain on CPUs")
        self.device = torch.device("cuda" if cam.gpus_per_actor > 0 else "cpu")
        if cam.torch_threads is not None:
            torch.set_num_threads(cam.torch_threads)
        self.cfg = cam
        self.methods = list(methods)
        self.model = load_model(model_dir, self.device)
        self.model.eval()
        self.model_id = self.model.card.model_id
        self.size = int(self.model.card.input_size)
        # One engine for every method: the fast ones share one forward and one backward pass.
        self.engine = CamEngine(self.model, method=self.methods[0], target=cam.target,
                                device=self.device) if self.methods else None
        self._road = None
        if cam.faithfulness and self.methods:
            from pytorch_grad_cam.metrics.road import ROADCombined

            self._road = ROADCombined(percentiles=list(ROAD_PERCENTILES))
        self._metrics = _Metrics(self.model_id)
        log.info("explainer ready: model %s on %s, methods %s", self.model_id, self.device, self.methods or "(predict only)")

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        start = time.perf_counter()
        rows = _Rows()
        reasons = np.asarray(batch["error_reason"], dtype=object)
        bad = np.array([bool(r) for r in reasons], dtype=bool)
        for i in np.flatnonzero(bad):
            self._error(rows, batch, i, str(reasons[i]), str(batch["error_detail"][i]))
        good = np.flatnonzero(~bad)
        explained = self._explain(batch, good, rows) if good.size else 0
        table = rows.to_table()
        self._metrics.record(explained, table["reason"], time.perf_counter() - start)
        return table

    # ------------------------------------------------------------------------------------------
    def _error(self, rows: _Rows, batch: dict[str, np.ndarray], i: int, reason: str, detail: str,
               method: str | None = None) -> None:
        rows.add({
            **_image_fields(batch, i),
            "model_id": self.model_id,
            "cam_method": method,
            "source": str(batch["path"][i]) if "path" in batch else str(batch["image_id"][i]),
            "stage": STAGE_OF_REASON.get(reason, "decode"),
            "reason": reason,
            "detail": detail,
        })

    def _explain(self, batch: dict[str, np.ndarray], idx: np.ndarray, rows: _Rows) -> int:
        """Explain images `idx` of the batch; on a failure, retry one by one so only the culprit fails."""
        try:
            outputs = self._forward(batch["image"][idx])
        except Exception as e:  # a model failure must not lose the other images of the batch
            if idx.size > 1:
                log.warning("batch of %d images failed (%s: %s); retrying one by one", idx.size, type(e).__name__, e)
                return sum(self._explain(batch, idx[j:j + 1], rows) for j in range(idx.size))
            log.exception("explaining %s failed", batch["image_id"][idx[0]])
            self._error(rows, batch, int(idx[0]), Reason.EXPLAIN_FAILED, f"{type(e).__name__}: {e}")
            return 0
        for j, i in enumerate(idx):
            self._add_rows(batch, int(i), j, outputs, rows)
        return int(idx.size)

    def _forward(self, images: np.ndarray) -> dict[str, Any]:
        """uint8 (B, S, S, 3) -> probs (B, 5), preds (B,) and, per method, targets (B,), maps (B, S, S), ROAD (B,)."""
        import torch

        x = self.model.normalize(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        out: dict[str, Any] = {"methods": {}}
        if not self.methods:
            with torch.inference_mode():
                outputs = self.model(x)
                out["probs"] = self.model.grade_probs(outputs).cpu().numpy()
                out["preds"] = self.model.predict(outputs).cpu().numpy()
            return out
        res = self.engine(x, output_size=(self.size, self.size), methods=self.methods)
        out["probs"] = res["probs"].numpy()
        out["preds"] = res["preds"].numpy()
        targets = res["targets"].numpy()
        for m in self.methods:
            cams = res["cams_by_method"][m].float().numpy()
            road = self._road_scores(x, cams, targets) if self._road is not None else None
            out["methods"][m] = {"cams": cams, "targets": targets, "road": road}
        return out

    def _road_scores(self, x: Any, cams: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """ROAD (Rong et al. 2022): least- minus most-relevant-first removal, averaged over percentiles.

        Higher is more faithful. The score perturbed is the one the map explains (the engine's target).
        """
        from drray.cam.targets import RowTarget

        row_targets = [RowTarget(self.model, self.engine.target, int(g)) for g in targets]
        scores = self._road(x, cams.astype(np.float32), row_targets, self.model)
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    def _add_rows(self, batch: dict[str, np.ndarray], i: int, j: int, outputs: dict[str, Any], rows: _Rows) -> None:
        probs = outputs["probs"][j]
        base = {
            **_image_fields(batch, i),
            "model_id": self.model_id,
            "pred": int(outputs["preds"][j]),
            "probs": [float(p) for p in probs],
            "referable_prob": float(probs[REFERABLE_MIN_GRADE:].sum()),
        }
        if not self.methods:
            rows.add(base)
            return
        bits = batch["masks"][i] if "masks" in batch else None
        box = (int(batch["box_y0"][i]), int(batch["box_x0"][i]), int(batch["box_side"][i]))
        shape = (int(batch["orig_h"][i]), int(batch["orig_w"][i]))
        for m, res in outputs["methods"].items():
            try:
                cam = res["cams"][j]
                scores = map_scores(cam, bits, box, shape, self.cfg.cam_size, self.cfg.pointing_tolerance)
                overlay = overlay_png(batch["image"][i], cam, self.cfg.overlay_size)
                road = res["road"]
                rows.add({
                    **base,
                    **scores,
                    "cam_method": m,
                    "target_class": int(res["targets"][j]) if res["targets"][j] >= 0 else None,
                    "overlay_png": overlay,
                    "road_score": None if road is None else _finite_or_none(float(road[j])),
                })
            except Exception as e:  # one bad map must not lose the image's other rows
                log.exception("scoring %s map of %s failed", m, base["image_id"])
                self._error(rows, batch, i, Reason.EXPLAIN_FAILED, f"{m}: {type(e).__name__}: {e}", method=m)


class _Metrics:
    """Ray metrics of an explainer actor (exported with the `ray_` prefix)."""

    def __init__(self, model_id: str):
        from ray.util.metrics import Counter, Histogram

        self.tags = {"model_id": model_id}
        self.images = Counter("drray_images_explained", description="Images explained (all methods).",
                              tag_keys=("model_id",))
        self.errors = Counter("drray_explain_errors", description="Images that became errors rows, by reason.",
                              tag_keys=("model_id", "reason"))
        self.latency = Histogram("drray_explain_batch_latency_s", description="Seconds per explain batch.",
                                 boundaries=LATENCY_BOUNDARIES_S, tag_keys=("model_id",))

    def record(self, explained: int, reasons: pa.ChunkedArray, seconds: float) -> None:
        if explained:
            self.images.inc(explained, tags=self.tags)
        for reason in reasons.drop_null().to_pylist():
            self.errors.inc(1, tags={**self.tags, "reason": reason})
        self.latency.observe(seconds, tags=self.tags)
