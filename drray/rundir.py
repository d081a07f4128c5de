"""Every file and folder a run directory holds, named once; every command, `drray query` and the Explore tab use these.

    runs/demo/
      config.json              the resolved recipe of the command that made the run
      manifest.parquet         `drray ingest`: one row per usable image
      ingest_errors.parquet    `drray ingest`: one row per refused image or label
      trials.parquet           `drray tune`: one row per trial
      model/                   `drray train` / `drray tune`: weights.safetensors + model.json
      train_metrics.json       `drray train`: best epoch and per-epoch history
      explanations/            `drray explain`: dataset=D/split=S/*.parquet
      explain_errors/          `drray explain`: images that could not be read or explained
      randomisation.parquet    `drray explain`: the model-randomisation sanity check (maps of re-initialised copies)
      strategies.parquet       `drray audit`: what the model looks at, one row per strategy (cluster of maps)
      strategy_of.parquet      `drray audit`: the strategy of every explanation row (the `strategy` column of explanations)
      interventions.parquet    `drray audit`: suspect strategies' images predicted again with the region removed
      reviews/                 the Explore tab: graders' verdicts on maps, one Parquet file per verdict
      metrics.json, metrics.parquet   `drray evaluate`
      report.html              `drray report`
      logs/                    drray's and Ray's own log lines (the console shows one line per step)
      synth/                   `drray demo`: the generated photographs
      ray_results/             Ray Train / Tune experiments, unless train.storage_path names another place

A run directory may be a local folder or a URI (s3://bucket/runs/demo): `RunDir` joins names
either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from drray import storage

DEFAULT_RUN = "runs/demo"
"""The run directory commands read and write when none is named: where `drray demo` puts its run."""
CONFIG = "config.json"
MANIFEST = "manifest.parquet"
INGEST_ERRORS = "ingest_errors.parquet"
TRIALS = "trials.parquet"
MODEL = "model"
TRAIN_METRICS = "train_metrics.json"
EXPLANATIONS = "explanations"
EXPLAIN_ERRORS = "explain_errors"
RANDOMISATION = "randomisation.parquet"
STRATEGIES = "strategies.parquet"
STRATEGY_OF = "strategy_of.parquet"
INTERVENTIONS = "interventions.parquet"
REVIEWS = "reviews"
"""A folder: each verdict is its own small Parquet file, written whole and moved into place, so a click is
recorded exactly once and survives any restart (no file is ever rewritten)."""
STAGING = ".staging"
"""Part files of `drray explain` are written here first and moved into place (exactly once)."""
METRICS_JSON = "metrics.json"
METRICS = "metrics.parquet"
REPORT = "report.html"
LOGS = "logs"
LOG_FILE = "drray.log"
"""Inside LOGS: drray's own log lines (every level) and Ray's driver-side output."""
SYNTH = "synth"
RAY_RESULTS = "ray_results"
SUMMARY = "summary.json"
"""`drray demo`: headline figures and where everything went."""


@dataclass(frozen=True)
class Table:
    """A table of a run directory as `drray query` sees it."""

    view: str
    """DuckDB view name."""
    name: str
    """File or folder inside the run directory."""
    partitioned: bool
    """A folder of hive-partitioned Parquet files (explanations/...), not one file."""
    what: str


TABLES: tuple[Table, ...] = (
    Table("manifest", MANIFEST, False, "one row per usable image (drray ingest)"),
    Table("ingest_errors", INGEST_ERRORS, False, "images and labels refused by drray ingest"),
    Table("trials", TRIALS, False, "one row per Tune trial (drray tune)"),
    Table("explanations", EXPLANATIONS, True, "one row per image and CAM method (drray explain)"),
    Table("explain_errors", EXPLAIN_ERRORS, True, "images drray explain could not read or explain"),
    Table("randomisation", RANDOMISATION, False, "maps of the model with its top layers re-initialised (sanity check)"),
    Table("strategies", STRATEGIES, False, "what the model looks at: one row per strategy of maps (drray audit)"),
    Table("strategy_of", STRATEGY_OF, False, "the strategy of each explanation row (drray audit)"),
    Table("interventions", INTERVENTIONS, False, "suspect strategies confirmed by removing their region (drray audit)"),
    Table("reviews", REVIEWS, True, "graders' verdicts on maps from the Explore tab"),
    Table("metrics", METRICS, False, "metrics per dataset, split, model and CAM method (drray evaluate)"),
)
ERRORS_VIEW = "errors"
"""`drray query` also shows both error tables as one view, with a `command` column (ingest / explain)."""


@dataclass(frozen=True)
class RunDir:
    """The names of one run directory (local path or URI)."""

    root: str

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", str(root))

    def __fspath__(self) -> str:
        return self.root

    def __str__(self) -> str:
        return self.root

    def path(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def config(self) -> str:
        return self.path(CONFIG)

    @property
    def manifest(self) -> str:
        return self.path(MANIFEST)

    @property
    def ingest_errors(self) -> str:
        return self.path(INGEST_ERRORS)

    @property
    def trials(self) -> str:
        return self.path(TRIALS)

    @property
    def model(self) -> str:
        return self.path(MODEL)

    @property
    def train_metrics(self) -> str:
        return self.path(TRAIN_METRICS)

    @property
    def explanations(self) -> str:
        return self.path(EXPLANATIONS)

    @property
    def explain_errors(self) -> str:
        return self.path(EXPLAIN_ERRORS)

    @property
    def randomisation(self) -> str:
        return self.path(RANDOMISATION)

    @property
    def strategies(self) -> str:
        return self.path(STRATEGIES)

    @property
    def strategy_of(self) -> str:
        return self.path(STRATEGY_OF)

    @property
    def interventions(self) -> str:
        return self.path(INTERVENTIONS)

    @property
    def reviews(self) -> str:
        return self.path(REVIEWS)

    @property
    def staging(self) -> str:
        return self.path(STAGING)

    @property
    def metrics_json(self) -> str:
        return self.path(METRICS_JSON)

    @property
    def metrics(self) -> str:
        return self.path(METRICS)

    @property
    def report(self) -> str:
        return self.path(REPORT)

    @property
    def logs(self) -> str:
        return self.path(LOGS)

    @property
    def log_file(self) -> str:
        return self.path(LOGS, LOG_FILE)

    @property
    def synth(self) -> str:
        return self.path(SYNTH)

    @property
    def ray_results(self) -> str:
        return self.path(RAY_RESULTS)

    @property
    def summary(self) -> str:
        return self.path(SUMMARY)

    def table(self, view: str) -> str:
        """Location of the table `drray query` calls `view`."""
        for t in TABLES:
            if t.view == view:
                return self.path(t.name)
        raise ValueError(f"unknown table {view!r}; a run directory has {', '.join(t.view for t in TABLES)}")


DEFAULT = RunDir(DEFAULT_RUN)
"""The names inside `DEFAULT_RUN` (runs/demo/manifest.parquet, runs/demo/model, ...)."""
