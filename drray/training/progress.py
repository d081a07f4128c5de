"""One progress bar for a whole search: trial, epoch and validation QWK, updated from Tune's results.

Tune's own status tables (`tune.verbose`) go to the run's log; this bar is what the console shows.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune import Callback


class SearchProgress(Callback):
    """A Tune callback advancing one bar over n_trials x epochs epochs.

    Tune pickles its callbacks with the experiment state; the bar (a terminal stream) stays behind.
    """

    def __init__(self, bar: Any, n_trials: int, epochs: int):
        self.bar = bar
        self.n_trials, self.total_epochs = n_trials, epochs
        self.epochs: dict[str, int] = {}
        self.order: dict[str, int] = {}
        self.best = -math.inf

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "bar"} | {"bar": None}

    def _index(self, trial) -> int:
        return self.order.setdefault(trial.trial_id, len(self.order) + 1)

    def _advance(self, trial, epoch: int) -> None:
        done = self.epochs.get(trial.trial_id, 0)
        self.epochs[trial.trial_id] = max(done, epoch)
        if self.bar is not None:
            self.bar.update(max(0, epoch - done))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result.get("epoch", 0))
        self._advance(trial, epoch)
        qwk = result.get("val_qwk", math.nan)
        if isinstance(qwk, (int, float)) and math.isfinite(qwk):
            self.best = max(self.best, float(qwk))
        if self.bar is not None:
            self.bar.set_description(
                f"tune: trial {self._index(trial)}/{self.n_trials} {trial.config.get('backbone', '?')} "
                f"epoch {epoch}/{self.total_epochs} val QWK {qwk:.3f} (best {self.best:.3f})", refresh=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Stopped early (ASHA, patience): the epochs it will not run count as done.
        self._advance(trial, self.total_epochs)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._advance(trial, self.total_epochs)

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self.bar.close()


def search_progress(console: Any, n_trials: int, epochs: int) -> SearchProgress:
    """A SearchProgress drawing on `console.progress`."""
    return SearchProgress(console.progress(total=n_trials * epochs, desc="tune", unit="epoch"), n_trials, epochs)
