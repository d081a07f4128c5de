"""Images explained so far, counted across the actor pool and shown as one bar (images, images/s) on the driver.

Explainer actors add to a zero-CPU counter actor after each batch (fire and forget); a thread on
the driver polls it while the pipeline runs. Ray Data's own bars, one per internal operator, go
to the run's log.
"""

from __future__ import annotations

import threading
from typing import Any

POLL_S = 0.5


class _Counter:
    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += int(n)

    def get(self) -> int:
        return self.n


class ExplainProgress:
    """`with ExplainProgress(console, total) as p:` ... pass `p.counter` to the actors."""

    def __init__(self, console: Any, total: int, desc: str = "explain"):
        import ray

        self.counter = ray.remote(num_cpus=0)(_Counter).remote()
        self.bar = console.progress(total=total, desc=desc, unit="img")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="drray-explain-progress", daemon=True)

    def _poll(self) -> None:
        import ray

        seen = 0
        while not self._stop.wait(POLL_S):
            try:
                n = ray.get(self.counter.get.remote(), timeout=5)
            except Exception:  # a slow or lost counter must never stop the job it watches
                continue
            self.bar.update(max(0, n - seen))
            seen = max(seen, n)

    def __enter__(self) -> "ExplainProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=10)
        self.bar.close()
        ray.kill(self.counter)
