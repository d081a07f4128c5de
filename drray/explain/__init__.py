"""Batch explanation of an archive on Ray Data: decode tasks -> actor pool -> exactly-once Parquet sink.

    pipeline       `explain(manifest, model_dir, out)`: plans the work, builds the Ray Data pipeline
    actor          BatchExplainer, the map_batches callable: a drray.inference.Predictor per actor
    sink           writes explanations/ and explain_errors/ exactly once
    progress       the console's progress bar, fed by the actors
    sample         a decoded sample in the driver, for the two checks below
    randomisation  the model-randomisation check, into randomisation.parquet
    select_layer   the CAM layer and method chosen by the pointing game, written into the model card
    grade          `grade_split`: a model dir graded on one split, no tables written

`drray.explain` is this package *and* the batch job: calling it runs `pipeline.explain`.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def explain(*args: Any, **kwargs: Any):
    """Run the batch explanation job (see `drray.explain.pipeline.explain`)."""
    from drray.explain.pipeline import explain as run

    return run(*args, **kwargs)


class _CallableModule(types.ModuleType):
    # Importing any submodule (`import drray.explain.sink`) binds this package to the name
    # `drray.explain`, shadowing the function the public API promises; a callable package keeps
    # `drray.explain(...)` working whatever was imported first.
    def __call__(self, *args: Any, **kwargs: Any):
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__all__ = ["explain"]
