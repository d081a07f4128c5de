"""drray: diabetic-retinopathy grading (ICDR 0-4) with Grad-CAM explanations at archive scale, on Ray.

`import drray` is light; the public API below is imported on first use:

    model = drray.load_model("runs/demo/model")
    fresh = drray.create_model("resnet50", head="classification")
    with drray.CamEngine(model, method="gradcam") as engine:
        out = engine(batch)
    result = drray.explain_image("eye.jpg", "runs/demo/model", method="gradcam")
    drray.explain("runs/demo/manifest.parquet", "runs/demo/model", "runs/demo")   # the batch job
    table = drray.query("select * from explanations where pred != label", run="runs/demo")
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_model": "drray.models.model",
    "create_model": "drray.models.model",
    "save_model": "drray.models.model",
    "DRModel": "drray.models.model",
    "list_backbones": "drray.models.model",
    "ModelCard": "drray.models.card",
    "CamEngine": "drray.cam",
    "CAM_METHODS": "drray.cam",
    "Config": "drray.config",
    "Predictor": "drray.inference",
    "explain_image": "drray.inference",
    "query": "drray.evaluate.query",
}

__all__ = sorted([*_LAZY, "explain"])


def __getattr__(name: str) -> Any:
    if name == "explain":
        # The package drray.explain is itself callable (it runs the batch job), so `drray.explain(...)`
        # works whether or not a submodule was imported first.
        value = importlib.import_module("drray.explain")
    else:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'drray' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
