"""Live explanations on Ray Serve: a REST API and a Gradio page over the one predictor (drray.inference).

    serve run serve_config.yaml                               # Ray's CLI, the repository's config
    url = run_server("runs/demo/model", ServeConfig(), block=False)   # from Python (`drray serve`)

Modules: args (the application's typed arguments), app (the builder), deployments (Explainer and
Ingress), explainer (PhotoExplainer: batched explanation on a replica), api (FastAPI routes), schemas (their
models), limits (body-size limit), refusals (4xx answers), ui (the page), explore (its Explore
tab), example_images (the page's examples), run (`run_server`). Importing this package imports
no torch, Gradio or Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AppArgs": "drray.serve.args",
    "build_app": "drray.serve.app",
    "run_server": "drray.serve.run",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'drray.serve' has no attribute {name!r}")
