"""Recipes shipped inside the package, so `drray demo` works from any directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def recipe_path(name: str) -> Path:
    """Path of the packaged recipe `name` (e.g. "synth_demo")."""
    p = Path(str(resources.files(__package__).joinpath(f"{name}.yaml")))
    if not p.is_file():
        raise FileNotFoundError(f"no packaged recipe named {name!r}")
    return p
