"""The trials table of a Tune experiment (`trials.parquet`) and the choice of the best trial.

One row per trial (schema `drray.schema.TRIALS_SCHEMA`): its search parameters, best
validation QWK and how that score was obtained, epochs run, how it ended and the checkpoint (a
model dir) of its best epoch. Built from the experiment directory itself, so a finished, stopped or restored
experiment gives the same table, on local disk or any storage pyarrow understands.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from drray.schema import TRIALS_SCHEMA

log = logging.getLogger(__name__)

METRIC = "val_qwk"

# How a trial ended, as stored in the `status` column.
COMPLETED = "completed"  # ran all epochs or stopped itself (early-stopping patience)
STOPPED = "stopped"  # stopped by the scheduler (ASHA) or an interrupted search
ERROR = "error"


def run_name(experiment: str, trial_id: str) -> str:
    """Name (under the storage path) of the Ray Train run of one trial: fixed, so a resumed search finds it."""
    return f"{experiment}/train_runs/{trial_id}"


def checkpoint_uri(path: str | None, storage_path: str) -> str | None:
    """Ray gives checkpoint paths without the scheme of remote storage; put it back (s3://...)."""
    if not path:
        return None
    if "://" in storage_path and "://" not in path:
        return f"{storage_path.split('://', 1)[0]}://{path}"
    return path


def kept_checkpoints(storage_path: str, experiment: str, trial_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(checkpoint URI, metrics) of every checkpoint Ray Train kept for a trial's run (best + latest)."""
    from ray.train import Result

    run = f"{storage_path.rstrip('/')}/{run_name(experiment, trial_id)}"
    try:
        result = Result.from_path(run)
    except RuntimeError:  # the trial never got as far as a first checkpoint
        return []
    return [(checkpoint_uri(c.path, storage_path), dict(m)) for c, m in (result.best_checkpoints or [])]


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def trial_row(trial_id: str, status: str, params: dict[str, Any], history: pd.DataFrame | None,
              kept: list[tuple[str, dict[str, Any]]], config_json: str, error: str | None = None) -> dict[str, Any]:
    """One table row.

    history: what the trial reported to Tune (one row per epoch; a resumed trial's rows start
    where it resumed). kept: the checkpoints its Ray Train run kept, best and latest: the best of
    them is the trial's result, whatever part of the run Tune saw.
    """
    row: dict[str, Any] = {
        "trial_id": trial_id,
        "backbone": params.get("backbone"),
        "head": params.get("head"),
        "lr": _num(params.get("lr")),
        "image_size": int(params["image_size"]) if params.get("image_size") is not None else None,
        "batch_size": int(params["batch_size"]) if params.get("batch_size") is not None else None,
        "best_val_qwk": math.nan, "epochs_run": 0, "status": status, "checkpoint_path": None,
        "config_json": config_json, "best_epoch": None, "val_accuracy": math.nan,
        "val_referable_auc": math.nan, "score_method": None, "seconds": math.nan, "error": error,
    }
    epochs = [int(m["epoch"]) for _, m in kept if "epoch" in m]
    if history is not None and not history.empty:
        if "epoch" in history:
            epochs += pd.to_numeric(history["epoch"], errors="coerce").dropna().astype(int).tolist()
        if "time_total_s" in history:
            row["seconds"] = _num(history["time_total_s"].max())
    row["epochs_run"] = max(epochs, default=0)
    scored = [(uri, m) for uri, m in kept if math.isfinite(_num(m.get(METRIC)))]
    if scored:
        # Best score first; among equals the earliest epoch (the fewer updates).
        uri, best = min(scored, key=lambda um: (-_num(um[1][METRIC]), _num(um[1].get("epoch"))))
        row.update(best_val_qwk=_num(best[METRIC]), checkpoint_path=uri, best_epoch=int(best.get("epoch", 0)),
                   val_accuracy=_num(best.get("val_accuracy")), val_referable_auc=_num(best.get("val_referable_auc")),
                   score_method=best.get("score_method"))
    elif history is not None and METRIC in history.columns:
        values = pd.to_numeric(history[METRIC], errors="coerce").dropna()
        if not values.empty:
            row["best_val_qwk"] = float(values.max())
            if "score_method" in history.columns:
                row["score_method"] = history["score_method"].iloc[-1]
    return row


def status_of(tune_status: str, history: pd.DataFrame | None) -> str:
    """Tune's trial status + the loop's `finished` flag -> completed / stopped / error / pending ..."""
    if tune_status == "ERROR":
        return ERROR
    if tune_status == "TERMINATED":
        finished = (history is not None and not history.empty and "finished" in history
                    and bool(history["finished"].iloc[-1]))
        return COMPLETED if finished else STOPPED
    return tune_status.lower()


def _error_text(trial) -> str | None:
    """Last line of a failed trial's error.txt (the exception), as Tune wrote it on this node."""
    path = trial.error_file
    if not path:
        return None
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"see error.txt in {trial.path}"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else None


def trials_table(storage_path: str, experiment: str, config_json_of) -> pd.DataFrame:
    """Every trial of the experiment `storage_path/experiment`, best first.

    config_json_of: function(trial params) -> the trial's resolved drray config as JSON.
    """
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(f"{storage_path.rstrip('/')}/{experiment}")
    frames = analysis.trial_dataframes
    rows = []
    for trial in analysis.trials:
        history = frames.get(trial.trial_id)
        params = dict(trial.config)
        status = status_of(trial.status, history)
        kept = kept_checkpoints(storage_path, experiment, trial.trial_id)
        rows.append(trial_row(trial.trial_id, status, params, history, kept, config_json_of(params),
                              error=_error_text(trial) if status == ERROR else None))
    df = pd.DataFrame(rows, columns=TRIALS_SCHEMA.names)
    return sort_trials(df)


def sort_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Best validation QWK first; trials without a score last."""
    key = df["best_val_qwk"].astype(float)
    order = np.argsort(-key.fillna(-np.inf).to_numpy(), kind="stable")
    return df.iloc[order].reset_index(drop=True)


def best_trial(df: pd.DataFrame) -> pd.Series:
    """The first (best) trial that left a checkpoint, or a RuntimeError saying what went wrong."""
    usable = df[df["checkpoint_path"].notna()]
    if usable.empty:
        errors = df.loc[df["error"].notna(), ["trial_id", "error"]].to_dict("records")
        detail = "; ".join(f"{e['trial_id']}: {e['error']}" for e in errors[:3]) or "no trial reported an epoch"
        raise RuntimeError(f"no trial produced a checkpoint ({detail})")
    return usable.iloc[0]


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """The table with its Parquet schema (TRIALS_SCHEMA)."""
    clean = df.astype(object).where(df.notna(), None)
    return pa.Table.from_pandas(clean, schema=TRIALS_SCHEMA, preserve_index=False)


def summary(df: pd.DataFrame, limit: int = 20) -> str:
    """A plain-text table of trials, best first."""
    if df.empty:
        return "no trials"
    cols = ["trial_id", "backbone", "head", "lr", "image_size", "batch_size", "best_val_qwk", "epochs_run", "status"]
    view = df[cols].head(limit).copy()
    view["lr"] = view["lr"].map(lambda x: f"{x:.2g}")
    view["best_val_qwk"] = view["best_val_qwk"].map(lambda x: "n/a" if pd.isna(x) else f"{x:.4f}")
    view.columns = ["trial", "backbone", "head", "lr", "size", "batch", "val QWK", "epochs", "status"]
    text = view.to_string(index=False)
    if len(df) > limit:
        text += f"\n... {len(df) - limit} more in trials.parquet"
    return text
