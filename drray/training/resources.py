"""What a Tune trial holds on the cluster: resources per trial, concurrency, and releasing them.

A trial is a fractional-CPU driver plus the Ray Train workers it starts. The workers sit in a
placement group that Ray Train removes when a run ends normally; when Tune stops a trial early
(ASHA), the run's controller dies with the trial and Ray Train's own cleaner needs the Ray State
API (the dashboard) to notice. Without it (a local instance started without the dashboard, or
several Ray instances on one machine) the group would keep its CPUs/GPUs until the search ends
and later trials would wait forever. `PlacementGroupReaper` removes such groups from the Tune
driver, which owns them.
"""

from __future__ import annotations

import logging
import os
import time

from drray.config import Config
from drray.training.loop import PLACEMENT_GROUP_METRIC

log = logging.getLogger(__name__)

REAP_GRACE_S = 5.0
"""Seconds after a trial ends before its placement group counts as orphaned: a run that ended
normally has removed its own by then."""


def trial_resources(cfg: Config) -> dict[str, float]:
    """CPUs and GPUs one trial holds while it trains (its driver plus its Ray Train workers)."""
    t = cfg.train
    res = {"CPU": cfg.tune.cpus_per_trial_driver + t.num_workers * t.cpus_per_worker}
    if t.use_gpu:
        res["GPU"] = t.num_workers * t.gpus_per_worker
    return res


def default_concurrency(cfg: Config, cluster: dict[str, float]) -> int:
    """Trials that fit side by side, leaving each one CPU room for its Ray Data decode tasks."""
    need = trial_resources(cfg)
    fits = [cluster.get("CPU", 0.0) / (need["CPU"] + cfg.data.decode_cpus)]
    if "GPU" in need:
        fits.append(cluster.get("GPU", 0.0) / need["GPU"])
    return max(1, int(min(fits)))


def check_fits(cfg: Config, cluster: dict[str, float]) -> None:
    """A trial that can never be scheduled waits forever: say so up front."""
    need = trial_resources(cfg)
    short = {k: (v, cluster.get(k, 0.0)) for k, v in need.items() if v > cluster.get(k, 0.0) + 1e-9}
    if not short:
        return
    detail = ", ".join(f"{v:g} {k} needed, {have:g} in the cluster" for k, (v, have) in short.items())
    msg = (f"one trial needs more than the Ray cluster has ({detail}): lower train.num_workers, "
           "train.cpus_per_worker, train.gpus_per_worker or tune.cpus_per_trial_driver, or set train.use_gpu=false")
    if os.environ.get("RAY_ADDRESS"):
        # An autoscaling cluster may still add nodes.
        log.warning("%s; waiting for the autoscaler", msg)
    else:
        raise ValueError(msg)


def release_placement_group(pg_hex: str) -> bool:
    """Remove a placement group by hex id unless it is already gone; True when one was removed."""
    from ray import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, placement_group_table, remove_placement_group

    pg = PlacementGroup(PlacementGroupID.from_hex(pg_hex))
    state = placement_group_table(pg).get("state")
    if state in (None, "REMOVED"):
        return False
    remove_placement_group(pg)
    return True


def placement_group_reaper(grace_s: float = REAP_GRACE_S):
    """A Tune callback removing the Ray Train placement groups of trials that ended (see module doc)."""
    from ray.tune import Callback

    class PlacementGroupReaper(Callback):
        def __init__(self) -> None:
            self._by_trial: dict[str, set[str]] = {}
            self._due: list[tuple[float, str, str]] = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            pg = result.get(PLACEMENT_GROUP_METRIC)
            if pg:
                self._by_trial.setdefault(trial.trial_id, set()).add(pg)

        def _schedule(self, trial) -> None:
            deadline = time.monotonic() + grace_s
            self._due.extend((deadline, trial.trial_id, pg) for pg in self._by_trial.pop(trial.trial_id, ()))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._schedule(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._schedule(trial)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self._schedule(trial)

        def on_step_begin(self, iteration, trials, **info):
            self._reap(time.monotonic())

        def on_experiment_end(self, trials, **info):
            # Every trial actor has stopped by now, and their runs' controllers with them.
            for trial in trials:
                self._schedule(trial)
            self._reap(float("inf"))

        def _reap(self, now: float) -> None:
            keep = []
            for deadline, trial_id, pg in self._due:
                if deadline > now:
                    keep.append((deadline, trial_id, pg))
                elif release_placement_group(pg):
                    log.info("released the Ray Train placement group of stopped trial %s", trial_id)
            self._due = keep

    return PlacementGroupReaper()
