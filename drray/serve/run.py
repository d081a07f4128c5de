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
    block: wait until Ctrl-C, then stop: Serve and Ray when this call started Ray, else only this
    application; False returns at once with the application running (`stop_server` undoes it).
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
    url = f"http://{_display_host(cfg.host)}:{cfg.port}"
    stop = block
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)
        log.info("serving %s at %s (page %s/ui, API %s/api/v1/explain)", model_dir, url, url, url)
        if not block:
            return url
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:  # Ctrl-C, while starting or serving
        log.info("stopping the server")
        if not block:
            stop = True
            raise
    except BaseException:
        stop = True  # a failed start leaves nothing behind
        raise
    finally:
        if stop:
            stop_server(started_ray)
    return url


def stop_server(started_ray: bool) -> None:
    """Undo `run_server`: all of Ray when it started Ray, else only this application (a cluster keeps the rest)."""
    import ray
    from ray import serve

    from drray.serve.app import APP_NAME

    if not ray.is_initialized():
        return
    if started_ray:
        serve.shutdown()
        ray.shutdown()
    else:
        serve.delete(APP_NAME)
