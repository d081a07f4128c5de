"""Tune: search space and config checks, the trials table, and real searches on a tiny synthetic
set (two backbones, the exported model, resuming finished and interrupted searches)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from drray.config import Config
from drray.schema import TRIALS_SCHEMA
from drray.training.resources import check_fits, default_concurrency, trial_resources
from drray.training.trials import best_trial, checkpoint_uri, sort_trials, status_of, summary, to_arrow, trial_row
from drray.training.tune import check_tune_config, param_space, search_values
from test_train import make_tiny_set, tiny_overrides

TWO_BACKBONES = "tune.backbones=[test_resnet,test_efficientnet]"


def tune_overrides(tmp: Path, *overrides: str) -> list[str]:
    """A small search whose experiments live in one named storage path, so a later run (another --out) resumes them."""
    return tiny_overrides(tmp, "tune.image_sizes=[64]", "tune.lrs=[0.003]", "tune.heads=[classification]",
                          "tune.verbose=0", "tune.cpus_per_trial_driver=0.1",
                          f"train.storage_path={tmp / 'ray_results'}", *overrides)


def tune_config(tmp: Path, *overrides: str) -> Config:
    return Config.from_yaml(None, tune_overrides(tmp, *overrides))


# ------------------------------------------------------------------------------------- pure parts
def test_search_space_is_a_grid_or_optuna_choices(tmp_path):
    cfg = tune_config(tmp_path, TWO_BACKBONES, "tune.lrs=[0.001,0.01]", "tune.heads=[classification,ordinal]")
    values = search_values(cfg)
    assert values["backbone"] == ["test_resnet", "test_efficientnet"]
    assert values["batch_size"] == [cfg.train.batch_size]  # tune.batch_sizes empty -> train.batch_size
    grid = param_space(cfg)
    assert grid["lr"] == {"grid_search": [0.001, 0.01]}
    assert math.prod(len(v["grid_search"]) for v in grid.values()) == 8
    cfg.tune.search_alg = "optuna"
    from ray.tune.search.sample import Categorical

    choices = param_space(cfg)
    assert all(isinstance(v, Categorical) for v in choices.values())
    assert choices["head"].categories == ["classification", "ordinal"]


@pytest.mark.parametrize("override, message", [
    ("tune.lrs=[-0.1]", "lrs"),
    ("tune.image_sizes=[8]", "image_sizes"),
    ("tune.heads=[regression]", "heads"),
    ("tune.backbones=[test_resnet,test_resnet]", "repeat"),
    ("tune.backbones=[test_resnet,no_such_net]", "unknown timm model"),
    ("tune.metric=val_loss", "unknown config key"),
    ("tune.num_samples=0", "num_samples"),
    ("tune.grace_period=0", "grace_period"),
    ("tune.batch_sizes=[0]", "batch_sizes"),
    ("tune.max_concurrent_trials=0", "max_concurrent_trials"),
])
def test_bad_search_configs_are_refused_with_the_key_named(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        check_tune_config(tune_config(tmp_path, override))


def test_resources_and_concurrency_per_trial(tmp_path):
    cfg = tune_config(tmp_path, "train.num_workers=4", "train.use_gpu=true", "train.gpus_per_worker=1",
                      "train.cpus_per_worker=4", "tune.cpus_per_trial_driver=0.5")
    assert trial_resources(cfg) == {"CPU": 16.5, "GPU": 4}
    assert default_concurrency(cfg, {"CPU": 64, "GPU": 8}) == 2  # GPU-bound: two 4-GPU trials per 8-GPU node
    small = tune_config(tmp_path)
    assert default_concurrency(small, {"CPU": 2}) == 1
    assert default_concurrency(small, {"CPU": 8}) == 5


def test_a_trial_that_can_never_fit_is_an_error_locally_and_a_warning_on_clusters(tmp_path, monkeypatch, caplog):
    cfg = tune_config(tmp_path, "train.use_gpu=true", "train.gpus_per_worker=1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="GPU needed"):
        check_fits(cfg, {"CPU": 2})
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    check_fits(cfg, {"CPU": 2})
    assert "autoscaler" in caplog.text
    check_fits(tune_config(tmp_path), {"CPU": 2})


def _history(qwks, finished_last=True):
    n = len(qwks)
    return pd.DataFrame({
        "epoch": range(1, n + 1), "val_qwk": qwks, "time_total_s": np.arange(1, n + 1) * 10.0,
        "finished": [False] * (n - 1) + [finished_last],
    })


def _kept(*epoch_qwk):
    return [(f"/ckpt/{e}", {"epoch": e, "val_qwk": q, "val_accuracy": 0.5, "val_referable_auc": 0.7})
            for e, q in epoch_qwk]


def test_trial_row_takes_the_best_checkpoint_ray_train_kept():
    params = {"backbone": "test_resnet", "head": "ordinal", "lr": 0.01, "image_size": 64, "batch_size": 8}
    row = trial_row("t1", "completed", params, _history([0.1, 0.8, 0.8, 0.5]), _kept((2, 0.8), (4, 0.5)), "{}")
    assert row["best_val_qwk"] == 0.8 and row["best_epoch"] == 2 and row["epochs_run"] == 4
    assert row["checkpoint_path"] == "/ckpt/2" and row["seconds"] == 40.0 and row["val_accuracy"] == 0.5
    # Equal scores kept: the earlier epoch.
    assert trial_row("t1", "completed", params, None, _kept((5, 0.7), (3, 0.7)), "{}")["best_epoch"] == 3
    # A resumed trial reported epochs 5-6 to Tune; its run kept the best (epoch 3) from before.
    resumed = trial_row("t1", "completed", params, _history([0.1] * 6).iloc[4:], _kept((3, 0.9), (6, 0.2)), "{}")
    assert (resumed["best_epoch"], resumed["epochs_run"], resumed["best_val_qwk"]) == (3, 6, 0.9)
    empty = trial_row("t2", "error", params, pd.DataFrame(), [], "{}", error="boom")
    assert math.isnan(empty["best_val_qwk"]) and empty["checkpoint_path"] is None and empty["epochs_run"] == 0
    unsaved = trial_row("t3", "stopped", params, _history([0.3, 0.4]), [], "{}")
    assert unsaved["best_val_qwk"] == 0.4 and unsaved["checkpoint_path"] is None


def test_trial_status_from_tune_status_and_the_loop_finished_flag():
    done, cut = _history([0.1, 0.2]), _history([0.1, 0.2], finished_last=False)
    assert status_of("TERMINATED", done) == "completed"
    assert status_of("TERMINATED", cut) == "stopped"
    assert status_of("ERROR", done) == "error"
    assert status_of("PENDING", None) == "pending"


def test_a_failed_trial_row_carries_the_last_line_of_its_error(tmp_path):
    from types import SimpleNamespace

    from drray.training.trials import _error_text

    err = tmp_path / "error.txt"
    err.write_text("Traceback (most recent call last):\n  File ...\nValueError: label 7 is outside 0-4\n\n")
    assert _error_text(SimpleNamespace(error_file=str(err), path=str(tmp_path))) == "ValueError: label 7 is outside 0-4"
    gone = SimpleNamespace(error_file=str(tmp_path / "missing.txt"), path="s3://bucket/exp/trial_1")
    assert _error_text(gone) == "see error.txt in s3://bucket/exp/trial_1"
    assert _error_text(SimpleNamespace(error_file=None, path="")) is None


def test_checkpoint_uri_restores_the_scheme_of_remote_storage():
    assert checkpoint_uri("bucket/exp/ckpt", "s3://bucket/exp") == "s3://bucket/exp/ckpt"
    assert checkpoint_uri("/nfs/exp/ckpt", "/nfs/exp") == "/nfs/exp/ckpt"
    assert checkpoint_uri(None, "s3://bucket") is None


def test_trials_table_sorts_best_first_and_keeps_the_parquet_schema():
    rows = [trial_row(tid, "completed", {"backbone": b, "head": "classification", "lr": 1e-3, "image_size": 64,
                                          "batch_size": 8}, _history(q), [], "{}")
            for tid, b, q in [("a", "x", [0.2]), ("b", "y", [np.nan]), ("c", "z", [0.1, 0.6])]]
    df = sort_trials(pd.DataFrame(rows))
    assert list(df["trial_id"]) == ["c", "a", "b"]
    table = to_arrow(df)
    for f in TRIALS_SCHEMA:
        assert table.schema.field(f.name).type == f.type
    text = summary(df)
    assert text.index("z") < text.index("x") < text.index("n/a")
    with pytest.raises(RuntimeError, match="no trial produced a checkpoint"):
        best_trial(df)


# ------------------------------------------------------------------------------------- Ray Tune
@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> str:
    return make_tiny_set(tmp_path_factory.mktemp("tiny_tune"))


@pytest.fixture(scope="module")
def searched(ray_session, tiny_manifest, tmp_path_factory):
    """One finished two-backbone search, shared by the tests below."""
    from drray.training.tune import tune

    tmp = tmp_path_factory.mktemp("search")
    cfg = tune_config(tmp, TWO_BACKBONES, "tune.name=two")
    return cfg, tmp, tune(cfg, tmp / "out", manifest=tiny_manifest)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tune_two_backbones_writes_trials_and_the_best_model(searched):
    from drray.models.model import load_model

    cfg, tmp, result = searched
    table = pq.read_table(result.trials_path)
    for f in TRIALS_SCHEMA:
        assert table.schema.field(f.name).type == f.type, f.name
    df = table.to_pandas()
    assert len(df) == 2 and df["trial_id"].is_unique
    assert sorted(df["backbone"]) == ["test_efficientnet", "test_resnet"]
    assert set(df["status"]) <= {"completed", "stopped"} and (df["epochs_run"] >= 1).all()
    assert df["best_val_qwk"].notna().all()
    assert df["best_val_qwk"].is_monotonic_decreasing
    assert (df["score_method"] == "val QWK of the argmax grade").all()  # how each score was obtained
    resolved = Config.from_dict(json.loads(df["config_json"][0]))
    assert resolved.model.backbone == df["backbone"][0] and resolved.data.preprocess.image_size == 64

    best = df.iloc[0]
    exported, checkpointed = load_model(result.model_dir), load_model(best["checkpoint_path"])
    assert exported.card.timm_name == best["backbone"]
    assert exported.card.metrics["epoch"] == best["best_epoch"]
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(x), checkpointed(x))
    assert "val QWK" in result.summary() and best["trial_id"] in result.summary()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_resuming_a_finished_search_gives_its_trials_back(searched, tiny_manifest):
    from drray.training.tune import tune

    cfg, tmp, first = searched
    again = tune(tune_config(tmp, TWO_BACKBONES, "tune.name=two", "tune.resume=true"), tmp / "out2",
                 manifest=tiny_manifest)
    assert again.experiment_path == first.experiment_path
    assert sorted(again.trials["trial_id"]) == sorted(first.trials["trial_id"])
    assert list(again.trials["best_val_qwk"]) == list(first.trials["best_val_qwk"])


INTERRUPTED_SEARCH = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    import ray
    from drray.config import Config
    from drray.training.tune import tune
    logging.basicConfig(level=logging.INFO)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    tune(Config.from_yaml(None, sys.argv[3:]), Path(sys.argv[1]), manifest=sys.argv[2])
""")


def _wait_for(condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the search exited (status {proc.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _epochs_recorded(experiment: Path) -> list[int]:
    epochs = []
    for f in experiment.glob("trial_*/result.json"):
        for line in f.read_text().splitlines():
            if line.strip():
                epochs.append(json.loads(line)["epoch"])
    return sorted(epochs)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_interrupted_search_resumes_its_trial_from_the_latest_checkpoint(ray_session, tiny_manifest, tmp_path):
    from drray.training.tune import tune

    # Enough epochs that the interrupt lands mid-trial; no early stopping to end it sooner.
    overrides = tune_overrides(tmp_path, "tune.backbones=[test_resnet]", "train.epochs=12",
                               "train.early_stopping_patience=0", "tune.name=interrupted", "tune.scheduler=fifo")
    experiment = tmp_path / "ray_results" / "interrupted"
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED_SEARCH, str(tmp_path / "first"), tiny_manifest,
                             *overrides], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: len(_epochs_recorded(experiment)) >= 1, 200, "the first epoch's report", proc)
        proc.send_signal(signal.SIGINT)  # as Ctrl-C: Tune saves the experiment state and stops
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = _epochs_recorded(experiment)
    assert before == list(range(1, len(before) + 1)) and len(before) < 12

    resumed = tune(Config.from_yaml(None, [*overrides, "tune.resume=true"]), tmp_path / "out", manifest=tiny_manifest)
    row = resumed.trials.iloc[0]
    assert len(resumed.trials) == 1 and row["status"] == "completed" and row["epochs_run"] == 12
    # Resumed, not restarted: the trial's Ray Train run went on from its latest checkpoint (at or after
    # the last epoch Tune saw before the interrupt) instead of starting again at epoch 1.
    after = _epochs_recorded(experiment)
    assert after[0] > before[-1] and after == list(range(after[0], 13))
    assert Path(resumed.model_dir, "model.json").is_file()
