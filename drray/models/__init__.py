"""Models: timm backbones with a 5-grade head, their model card, the ordinal head, weights I/O.

    model   DRModel, create_model, save_model / load_model (model dirs: weights.safetensors + model.json)
    card    model.json: everything needed to rebuild a model and its preprocessing
    ordinal the ordinal head's thresholds and probabilities
    weights local pretrained weights, safetensors I/O, digests

Nothing here imports training, explanation or serving code.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "DRModel": "drray.models.model",
    "create_model": "drray.models.model",
    "save_model": "drray.models.model",
    "load_model": "drray.models.model",
    "list_backbones": "drray.models.model",
    "ModelCard": "drray.models.card",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    # torch and timm load on first use, so `import drray.models.card` stays light.
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'drray.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
