"""`run_server`: start the application on the connected Ray (or a local one) and return its URL.

`drray serve --model DIR` and the end of `drray demo` call this; `serve run serve_config.yaml`
is the same application started by Ray's own CLI.
"""

from __future__ import annotations

import logging
import os
import time

from drray.config import ServeConfig

log = logging.getLogger(__name__)


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def run_server(model_dir: str | os.PathLike, cfg: ServeConfig, run_dir: str | None = None,
               block: bool = True) -> str:
    """Serve `model_dir` (REST API at /api/v1, page at /ui) as `cfg` says; returns the base URL.

    run_dir: the run directory the Explore tab reads (None: the application's default, runs/demo).
    block: wait until Ctrl-C, then shut Serve down (and Ray, when this call started it); False
    returns at once with the application running.
    """
    import ray
    from ray import serve

    from drray.cluster import connect
    from drray.serve.app import APP_NAME, build_app
    from drray.serve.args import AppArgs

    extra = {"model_dir": str(model_dir)}
    if run_dir is not None:
        extra["run_dir"] = str(run_dir)
    args = AppArgs.from_config(cfg, **extra)
    started_ray = not ray.is_initialized()
    connect()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{_display_host(cfg.host)}:{cfg.port}"
    log.info("serving %s at %s (page %s/ui, API %s/api/v1/explain)", model_dir, url, url, url)
    if not block:
        return url
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        log.info("stopping the server")
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()
    return url
