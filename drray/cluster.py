"""Connecting to Ray: the cluster named by RAY_ADDRESS when set, otherwise a local instance."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def connect(num_cpus: int | None = None, **kwargs) -> None:
    """Initialise Ray once per process; a no-op when already connected (as inside a Ray job)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        # The dashboard serves the State API, which Ray Train's placement-group cleaner polls to see
        # whether a run's controller is alive; without it the cleaner warns every few seconds.
        kwargs.setdefault("include_dashboard", True)
        # "local" never attaches to a cluster someone else started with `ray start`.
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
