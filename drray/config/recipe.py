"""`Config`: a whole recipe, every section, from YAML and `section.field=value` overrides."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from drray.config.audit import AuditConfig
from drray.config.data import DataConfig, SynthConfig
from drray.config.explain import CamConfig, ExplainConfig
from drray.config.serve import ServeConfig
from drray.config.training import ModelConfig, TrainConfig, TuneConfig


@dataclass
class Config:
    """A whole recipe: every section, as in configs/*.yaml."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        return build(cls, raw, "")

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: Iterable[str] = ()) -> "Config":
        raw: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"config file {str(p)!r} does not exist")
            raw = yaml.safe_load(p.read_text()) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"config file {str(p)!r} must hold a mapping of sections, got {type(raw).__name__}")
        for item in overrides:
            apply_override(raw, item)
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `section.field[.sub]=value` in a raw config mapping; the value is parsed as YAML."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form section.field=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"override {item!r}: key must name a section and a field, e.g. train.epochs=3")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {p!r} is not a section")
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else None


MOVED = {f"cam.{name}": f"explain.{name}" for name in (f.name for f in fields(ExplainConfig))}
"""Keys recipes written for an earlier drray used, and where they live now."""


def build(cls: type, raw: dict[str, Any] | None, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, recursing into nested dataclasses."""
    raw = dict(raw or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    prefix = f"{where}." if where else ""
    moved = [f"{prefix}{u} is now {MOVED[prefix + u]}" for u in unknown if prefix + u in MOVED]
    if moved:
        raise ValueError(f"config key(s) moved: {'; '.join(moved)} (how the batch job runs lives apart from "
                         "what a map is)")
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in raw.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = build(type(default), value, f"{where}.{name}" if where else name)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad config for {where or cls.__name__}: {e}") from e
