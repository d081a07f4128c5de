"""Typed configuration: one dataclass per stage, filled from YAML recipes and `key=value` overrides.

A recipe (configs/*.yaml) has one mapping per section (`data:`, `model:`, `train:` ...); an
override names a section and a field, `train.epochs=3`, and its value is parsed as YAML, so
`tune.backbones=[resnet18,resnet50]` is a list. Unknown keys are errors, never silently ignored.

    data      SynthConfig, PreprocessConfig, DataConfig
    training  ModelConfig, TrainConfig, TuneConfig
    explain   CamConfig (what a map is), ExplainConfig (how the batch job runs)
    audit     AuditConfig (drray audit: strategies, the suspect rule, the intervention)
    serve     ServeConfig
    recipe    Config (every section), apply_override, build
"""

from __future__ import annotations

from drray.config.audit import AuditConfig
from drray.config.data import DataConfig, PreprocessConfig, SynthConfig
from drray.config.explain import CamConfig, ExplainConfig
from drray.config.recipe import MOVED, Config, apply_override, build
from drray.config.serve import ServeConfig
from drray.config.training import ModelConfig, TrainConfig, TuneConfig

__all__ = [
    "Config", "SynthConfig", "PreprocessConfig", "DataConfig", "ModelConfig", "TrainConfig", "TuneConfig",
    "CamConfig", "ExplainConfig", "AuditConfig", "ServeConfig", "MOVED", "apply_override", "build",
]
