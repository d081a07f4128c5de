"""Dataset adapters: one module per on-disk layout, found by name in a registry.

    from drray.data.sources import get_source, list_sources
    src = get_source("aptos2019")
    for record in src.scan(Path("data/aptos")):   # Candidate or Problem
        ...

An adapter only finds images and reads their labels as written; `drray.data.ingest` validates and
writes the manifest. Each layout is described in its module and in `Source.looked_for`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Iterable

from drray.data.sources.base import Candidate, Problem

__all__ = ["Candidate", "Problem", "Source", "get_source", "list_sources", "register"]

ScanFn = Callable[..., Iterable["Candidate | Problem"]]


@dataclass(frozen=True)
class Source:
    """A registered layout: `scan(root, **options)` yields its candidate records."""

    name: str
    scan: ScanFn
    looked_for: str
    """What the adapter looks for under the root, for the message when nothing is found."""


_REGISTRY: dict[str, Source] = {}

# Adapter modules, imported on first lookup (they register themselves).
_MODULES = ("aptos", "eyepacs", "messidor", "idrid", "ddr", "csv_source", "folder", "synth_source")


def register(name: str, looked_for: str) -> Callable[[ScanFn], ScanFn]:
    """Decorator: register `scan(root: Path, **options)` as the adapter of source `name`."""

    def wrap(fn: ScanFn) -> ScanFn:
        if name in _REGISTRY:
            raise ValueError(f"dataset source {name!r} is registered twice")
        _REGISTRY[name] = Source(name, fn, looked_for)
        return fn

    return wrap


def _load() -> None:
    # importlib caches modules, so this costs a dict lookup after the first call.
    for m in _MODULES:
        importlib.import_module(f"drray.data.sources.{m}")


def list_sources() -> list[str]:
    """Names of every registered source, sorted."""
    _load()
    return sorted(_REGISTRY)


def get_source(name: str) -> Source:
    """The adapter of `name`, or a ValueError listing the known ones."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset source {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None

