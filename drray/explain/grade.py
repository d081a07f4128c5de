"""A model dir graded on one split of a manifest, without writing tables: `grade_split`.

    report = grade_split("runs/demo/model", "runs/demo/manifest.parquet", split="test")
    report["qwk"], report["referable_auc"], report["skipped_unreadable"]

The images are decoded on Ray Data with the model's own preprocessing (its model.json) and graded
by `drray.inference.Predictor`, the code batch explanation and serving use, so the figures equal
what `drray explain` with no CAM method followed by `drray evaluate` reports. Images that cannot be
read are counted, not graded; `max_pixels` is the limit ingest admitted them with.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from drray.data.images import DEFAULT_MAX_PIXELS


def grade_split(model_dir: str | os.PathLike, manifest: str | os.PathLike, split: str = "test", *,
                batch_size: int = 32, num_cpus: float = 1.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                device: Any = None, n_boot: int = 1000) -> dict[str, Any]:
    """`classification_report` of the model on the labelled images of `split`, plus counts and ids."""
    from drray.data.dataset import build_dataset
    from drray.inference import Predictor
    from drray.scores.grading import classification_report

    predictor = Predictor.from_model_dir(model_dir, methods=(), device=device, max_pixels=max_pixels)
    ds = build_dataset(manifest, predictor.preprocess, split=split, labelled_only=True, num_cpus=num_cpus,
                       max_pixels=max_pixels)
    probs, preds, labels, skipped = [], [], [], 0
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        ok = batch["error_reason"] == ""
        skipped += int((~ok).sum())
        if not ok.any():
            continue
        p = predictor.predict(batch["image"][ok])
        probs.append(p.probs)
        preds.append(p.preds)
        labels.append(batch["label"][ok].astype(np.int64))
    if not labels:
        raise ValueError(f"no readable labelled image in split {split!r} of {manifest}")
    report = classification_report(np.concatenate(labels), np.concatenate(probs), preds=np.concatenate(preds),
                                   n_boot=n_boot)
    return {"split": split, "model_dir": str(model_dir), "model_id": predictor.model_id,
            "skipped_unreadable": skipped, **report}
