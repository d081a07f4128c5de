"""Ray Tune search over backbones x learning rates x image sizes x heads (x batch sizes).

Each trial is a small function trainable (fractional CPU) that runs one Ray Train TorchTrainer
and forwards its per-epoch reports to Tune with `TuneReportCallback`; ASHA stops weak trials by
epoch, Optuna can replace the grid. The search writes `out/trials.parquet` (one row per trial)
and exports the best trial's best checkpoint as the model dir `out/model`.

Experiments live at `train.storage_path/tune.name` (default OUT/ray_results; S3, GCS or NFS on a
cluster, any URI pyarrow understands), so an interrupted search resumes with `tune.resume=true`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from drray import storage
from drray.config import Config
from drray.rundir import RunDir
from drray.training.train import (
    SCORE_METRIC,
    SplitData,
    build_trainer,
    check_train_config,
    export_model,
    split_datasets,
    storage_uri,
    trial_config,
)
from drray.training.resources import check_fits, default_concurrency, placement_group_reaper
from drray.training.trials import run_name

log = logging.getLogger(__name__)

SEARCH_KEYS = ("backbone", "head", "lr", "image_size", "batch_size")


def search_values(cfg: Config) -> dict[str, list]:
    """The values each search parameter takes (a single value when the recipe gives one)."""
    t = cfg.tune
    return {
        "backbone": list(t.backbones),
        "head": list(t.heads),
        "lr": [float(x) for x in t.lrs],
        "image_size": [int(x) for x in t.image_sizes],
        "batch_size": [int(x) for x in t.batch_sizes] or [cfg.train.batch_size],
    }


def check_tune_config(cfg: Config) -> None:
    """Reject a search that could only fail later, inside trials (TuneConfig checks the lists themselves)."""
    for backbone in search_values(cfg)["backbone"]:
        check_train_config(trial_config(cfg, backbone=backbone))


def param_space(cfg: Config) -> dict[str, Any]:
    """Tune's search space: a grid, or categorical choices for Optuna."""
    from ray import tune

    values = search_values(cfg)
    if cfg.tune.search_alg == "optuna":
        return {k: tune.choice(v) for k, v in values.items()}
    return {k: tune.grid_search(v) for k, v in values.items()}


def run_trial(params: dict[str, Any], *, base: dict[str, Any], manifest: str, data: dict[int, SplitData] | None,
              storage_path: str, experiment: str) -> None:
    """Tune function trainable: one TorchTrainer with the trial's parameters, reporting every epoch to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(Config.from_dict(base), **params)
    split = data.get(cfg.data.preprocess.image_size) if data else None
    if split is None:
        split = split_datasets(manifest, cfg)
    trial_id = ray.tune.get_context().get_trial_id()
    # A fixed name per trial: a restored search re-runs this function and Ray Train resumes the run
    # from its latest checkpoint instead of starting over.
    trainer = build_trainer(cfg, split, name=run_name(experiment, trial_id), storage_path=storage_path,
                            callbacks=[TuneReportCallback()])
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


@dataclass
class TuneResult:
    """What `tune` wrote: the trials table (best first), the exported model dir and where the experiment is."""

    trials: pd.DataFrame
    model_dir: str
    trials_path: str
    experiment_path: str
    seconds: float
    cam_selection: Any = None
    """The CAM layer and method chosen on the validation split (drray.explain.select_layer.CamSelection);
    None where it has no lesion masks or `explain.select_layer` is off."""

    @property
    def best(self) -> pd.Series:
        from drray.training.trials import best_trial

        return best_trial(self.trials)

    def summary(self) -> str:
        from drray.training.trials import summary

        b = self.best
        return "\n".join([
            summary(self.trials),
            f"best: {b['trial_id']} {b['backbone']} ({b['head']}, {b['image_size']} px, lr {b['lr']:.2g}) "
            f"val QWK {b['best_val_qwk']:.4f} at epoch {b['best_epoch']}",
            f"model dir: {self.model_dir}",
            *([self.cam_selection.summary()] if self.cam_selection is not None else []),
            f"trials: {self.trials_path}",
            f"experiment: {self.experiment_path} ({self.seconds:.0f}s)",
        ])


def _experiment_name(cfg: Config, store: str) -> tuple[str, bool]:
    """(name, restore): restore an existing experiment when asked, never silently mix two searches."""
    from ray.tune import Tuner

    name = cfg.tune.name
    path = f"{store.rstrip('/')}/{name}"
    can = Tuner.can_restore(path)
    if cfg.tune.resume:
        if can:
            log.info("resuming the search at %s", path)
            return name, True
        log.warning("tune.resume is true but there is no experiment to resume at %s; starting a new search there", path)
        return name, False
    if can:
        fresh = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        log.warning("an experiment already exists at %s; starting a new one as %s "
                    "(to continue the old one instead, run with tune.resume=true)", path, fresh)
        return fresh, False
    return name, False


def _prepare_data(cfg: Config, manifest: str) -> dict[int, SplitData] | None:
    """Decode each image size once for every trial (train.materialize), or let trials stream."""
    if not cfg.train.materialize:
        return None
    out = {}
    for size in search_values(cfg)["image_size"]:
        t = time.perf_counter()
        out[size] = split_datasets(manifest, trial_config(cfg, image_size=size))
        log.info("decoded %s images at %d px in %.1fs", out[size].counts, size, time.perf_counter() - t)
    return out


def n_trials(cfg: Config) -> int:
    """Trials the search runs: the whole grid per sample, or `num_samples` draws for Optuna."""
    if cfg.tune.search_alg == "optuna":
        return cfg.tune.num_samples
    return math.prod(len(v) for v in search_values(cfg).values()) * cfg.tune.num_samples


def build_tuner(cfg: Config, manifest: str, store: str, name: str, restore: bool,
                data: dict[int, SplitData] | None, callbacks: list | None = None):
    """The Tuner (new, or restored from `store/name`)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = cfg.tune
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=cfg.to_dict(), manifest=manifest, data=data,
                             storage_path=store, experiment=name),
        {"cpu": t.cpus_per_trial_driver},
    )
    if restore:
        return tune.Tuner.restore(f"{store.rstrip('/')}/{name}", trainable=trainable,
                                  resume_unfinished=True, resume_errored=True)
    import ray

    if t.scheduler == "asha":
        # max_t one past the last epoch: a trial that reaches the end finishes by itself (a clean
        # shutdown of its run) instead of being stopped by the scheduler at its last report.
        scheduler = ASHAScheduler(time_attr="epoch", max_t=cfg.train.epochs + 1, grace_period=t.grace_period,
                                  reduction_factor=t.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    search_alg = None
    if t.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=cfg.train.seed)
    concurrency = t.max_concurrent_trials or default_concurrency(cfg, ray.cluster_resources())
    log.info("tune: %s search, %s scheduler, up to %d trial(s) at a time", t.search_alg, t.scheduler, concurrency)
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric=SCORE_METRIC, mode="max", scheduler=scheduler, search_alg=search_alg,
            num_samples=t.num_samples, max_concurrent_trials=concurrency,
            trial_dirname_creator=_trial_dirname, reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=store, verbose=t.verbose,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            callbacks=[placement_group_reaper(), *(callbacks or [])],
        ),
    )


def tune(cfg: Config, out: str | os.PathLike, manifest: str | None = None, console: Any = None) -> TuneResult:
    """Search, write `out/trials.parquet`, export the best checkpoint to `out/model`.

    console: a `drray.console.Console` to show one progress bar (trial, epoch, val QWK) on.
    """
    import ray

    from drray.cluster import connect
    from drray.training.progress import search_progress
    from drray.training.trials import best_trial, to_arrow, trials_table

    check_tune_config(cfg)
    manifest = str(manifest or cfg.data.manifest)
    if not storage.is_file(manifest):
        raise FileNotFoundError(f"manifest {manifest!r} does not exist; write one with `drray ingest`")
    run = RunDir(out)
    storage.make_dirs(run.root)
    connect()
    check_fits(cfg, ray.cluster_resources())
    start = time.perf_counter()
    store = storage_uri(cfg, run.root)
    name, restore = _experiment_name(cfg, store)
    data = _prepare_data(cfg, manifest)
    progress = [search_progress(console, n_trials(cfg), cfg.train.epochs)] if console is not None else []
    tuner = build_tuner(cfg, manifest, store, name, restore, data, callbacks=progress)
    grid = tuner.fit()

    def config_json(params: dict[str, Any]) -> str:
        keys = {k: params[k] for k in SEARCH_KEYS if k in params}
        return trial_config(cfg, **keys).to_json()

    df = trials_table(store, name, config_json)
    storage.write_parquet(run.trials, to_arrow(df))
    best = best_trial(df)
    model_dir = export_model(best["checkpoint_path"], run.model)
    n_err = int((df["status"] == "error").sum())
    if n_err:
        log.warning("%d of %d trials failed; their errors are in %s (column `error`)", n_err, len(df), run.trials)
    selection = select_layer(cfg, manifest, model_dir) if cfg.explain.select_layer else None
    return TuneResult(df, model_dir, run.trials, grid.experiment_path, time.perf_counter() - start, selection)


def select_layer(cfg: Config, manifest: str, model_dir: str | os.PathLike):
    """The exported model's CAM layer and method, chosen on `explain.select_split`'s lesion images; None without masks."""
    from drray.explain.select_layer import NotEnoughMasks, select_cam_target

    try:
        return select_cam_target(manifest, model_dir, split=cfg.explain.select_split, cam=cfg.cam, job=cfg.explain,
                                 max_pixels=cfg.data.max_image_pixels, seed=cfg.data.seed)
    except NotEnoughMasks as e:
        log.info("CAM layer left at the default stride: %s", e)
        return None
