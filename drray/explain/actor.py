"""The stateful `map_batches` callable of `drray explain`: decoded images -> explanation rows and error rows.

A `BatchExplainer` lives in a Ray actor and wraps one `drray.inference.Predictor`, built once in
`__init__` from the model dir's bytes (shipped through the object store, so actors on nodes that
cannot see the driver's filesystem load the same model). Each batch of decoded rows
(`drray.data.decode.decode_batch`) becomes one row per image and method
(`schema.EXPLANATIONS_SCHEMA`); the fast methods share one forward and one backward pass per
batch. Images that could not be read, or that the model failed on, become error rows (`reason`
set) in the same output, so the sink writes both tables from one stream and no image is lost
between them.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from drray.config import CamConfig, ExplainConfig
from drray.data.images import DEFAULT_MAX_PIXELS
from drray.schema import EXPLAIN_STREAM_SCHEMA, Reason
from drray.storage import finite_or_none

log = logging.getLogger(__name__)

STAGE_OF_REASON = {Reason.MISSING_FILE: "read", Reason.EMPTY_FILE: "read", Reason.EXPLAIN_FAILED: "explain"}
LATENCY_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]


class _Rows:
    """Column lists for one output block."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in EXPLAIN_STREAM_SCHEMA.names}

    def add(self, values: dict[str, Any]) -> None:
        for name, col in self.cols.items():
            col.append(values.get(name))

    def to_table(self) -> pa.Table:
        return pa.Table.from_pydict(self.cols, schema=EXPLAIN_STREAM_SCHEMA)


def _image_fields(batch: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    label = int(batch["label"][i])
    return {
        "image_id": str(batch["image_id"][i]),
        "dataset": str(batch["dataset"][i]),
        "split": None if batch["split"][i] is None else str(batch["split"][i]),
        "label": label if label >= 0 else None,
        "quality_ok": bool(batch["quality_ok"][i]),
        "eye": (str(batch["eye"][i]) or None) if "eye" in batch and batch["eye"][i] is not None else None,
    }


class BatchExplainer:
    """A Predictor in one actor: `__call__(batch) -> pa.Table` of `EXPLAIN_STREAM_SCHEMA` rows.

    model: the model dir's `ModelFiles` (or an object-store reference to them, or a model dir path).
    methods: CAM methods to run on every image; empty means predict only (one row per image,
    cam_method and the map columns null).
    cam: what the maps are (`CamConfig`); job: the actor's device and threads (`ExplainConfig`).
    progress: a counter actor (drray.explain.progress) told how many images each batch held.
    """

    def __init__(self, model: Any, methods: Sequence[str], cam: CamConfig, job: ExplainConfig | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress: Any = None):
        import ray
        import torch

        from drray.inference import Predictor

        job = job or ExplainConfig()
        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        if job.gpus_per_actor > 0 and not torch.cuda.is_available():
            raise RuntimeError(
                f"explain.gpus_per_actor={job.gpus_per_actor} but this actor sees no CUDA device; "
                "set explain.gpus_per_actor=0 to explain on CPUs")
        if job.torch_threads is not None:
            torch.set_num_threads(job.torch_threads)
        device = "cuda" if job.gpus_per_actor > 0 else "cpu"
        self.predictor = Predictor.from_model_dir(model, methods=methods, cam=cam, device=device, max_pixels=max_pixels)
        self.methods = list(self.predictor.methods)
        self.model_id = self.predictor.model_id
        self.layer = self.predictor.target_layer if self.methods else None
        self._metrics = _Metrics(self.model_id)
        self._progress = progress
        log.info("explainer ready: model %s on %s, methods %s, layer %s", self.model_id, device,
                 self.methods or "(predict only)", self.layer)

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
        if self._progress is not None:
            self._progress.add.remote(len(reasons))
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
            out = self.predictor.explain(batch["image"][idx])
        except Exception as e:  # a model failure must not lose the other images of the batch
            if idx.size > 1:
                log.warning("batch of %d images failed (%s: %s); retrying one by one", idx.size, type(e).__name__, e)
                return sum(self._explain(batch, idx[j:j + 1], rows) for j in range(idx.size))
            log.exception("explaining %s failed", batch["image_id"][idx[0]])
            self._error(rows, batch, int(idx[0]), Reason.EXPLAIN_FAILED, f"{type(e).__name__}: {e}")
            return 0
        for j, i in enumerate(idx):
            self._add_rows(batch, int(i), j, out, rows)
        return int(idx.size)

    def _add_rows(self, batch: dict[str, np.ndarray], i: int, j: int, out: Any, rows: _Rows) -> None:
        from drray.data.geometry import Geometry

        base = {
            **_image_fields(batch, i),
            "model_id": self.model_id,
            "pred": int(out.preds[j]),
            "probs": [float(p) for p in out.probs[j]],
            "referable_prob": float(out.referable_prob[j]),
        }
        if not self.methods:
            rows.add(base)
            return
        geometry = [Geometry.from_columns(batch, i)]
        bits = [batch["masks"][i]] if "masks" in batch else None
        # The overlay goes on the colour photograph (cropped to the fundus) where the decode step kept one.
        photo = [batch["photo"][i] if "photo" in batch else batch["image"][i]]
        for m, maps in out.maps.items():
            try:
                scored = self.predictor.score_maps(maps[j:j + 1], geometry, bits, photo, eyes=[base["eye"]])[0]
                extra = {k: finite_or_none(v[j]) for k, v in out.faithfulness.get(m, {}).items()}
                rows.add({
                    **base,
                    **scored.columns,
                    **extra,
                    "cam_method": m,
                    "cam_layer": self.layer,
                    "target_class": int(out.targets[j]) if out.targets[j] >= 0 else None,
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
        self.errors = Counter("drray_explain_errors", description="Images that became error rows, by reason.",
                              tag_keys=("model_id", "reason"))
        self.latency = Histogram("drray_explain_batch_latency_s", description="Seconds per explain batch.",
                                 boundaries=LATENCY_BOUNDARIES_S, tag_keys=("model_id",))

    def record(self, explained: int, reasons: pa.ChunkedArray, seconds: float) -> None:
        if explained:
            self.images.inc(explained, tags=self.tags)
        for reason in reasons.drop_null().to_pylist():
            self.errors.inc(1, tags={**self.tags, "reason": reason})
        self.latency.observe(seconds, tags=self.tags)
