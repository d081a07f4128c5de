"""`AppArgs`: the typed arguments of the Serve application (serve_config.yaml `args:`, `run_server`).

Its fields are `drray.config.ServeConfig`'s (less host and port, which belong to Serve's
`http_options`), plus `run_dir` for the Explore tab, so a YAML file, `drray serve` and Python
all validate the same way, with ServeConfig's messages.
"""

import dataclasses
import os
import typing
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from drray.config import ServeConfig
from drray.rundir import DEFAULT_RUN

HTTP_FIELDS = ("host", "port")
"""ServeConfig fields that are Serve's `http_options`, not application arguments."""


class _AppArgsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _validate_as_serve_config(self) -> "_AppArgsBase":
        self.serve_config()  # its ValueError becomes pydantic's ValidationError, naming the field
        return self

    def serve_config(self) -> ServeConfig:
        """These arguments as the `ServeConfig` they were made from (host and port at their defaults)."""
        return ServeConfig(**self.model_dump(exclude={"run_dir"}))

    def resolved(self) -> "_AppArgsBase":
        """A copy whose local relative paths are absolute, for replicas started in another working directory."""
        def absolute(path: Optional[str]) -> Optional[str]:
            if path is None or "://" in path:
                return path
            return os.path.abspath(path)

        return self.model_copy(update={"model_dir": absolute(self.model_dir), "run_dir": absolute(self.run_dir)})

    @classmethod
    def from_config(cls, cfg: ServeConfig, **extra: Any) -> "_AppArgsBase":
        values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ServeConfig) if f.name not in HTTP_FIELDS}
        return cls(**{**values, **extra})


def _serve_fields() -> dict[str, Any]:
    hints = typing.get_type_hints(ServeConfig)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(ServeConfig):
        if f.name in HTTP_FIELDS:
            continue
        default = (Field(default_factory=f.default_factory) if f.default_factory is not dataclasses.MISSING
                   else Field(default=f.default))
        out[f.name] = (hints[f.name], default)
    return out


AppArgs = create_model(
    "AppArgs",
    __base__=_AppArgsBase,
    __doc__="Arguments of `drray.serve.app:build_app`: ServeConfig's fields (less host/port) and `run_dir`.",
    run_dir=(Optional[str], Field(default=DEFAULT_RUN,
                                  description="Run directory the Explore tab reads (null: no Explore data).")),
    **_serve_fields(),
)
