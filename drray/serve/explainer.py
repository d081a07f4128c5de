"""`PhotoExplainer`: what an Explainer replica runs: one `drray.inference.Predictor`, uploaded photographs explained in batches.

A request's photograph is decoded and preprocessed in a thread of the replica (the reader and
preprocessing of training and batch explanation: `Predictor.prepare_photo`), the network inputs
of requests waiting together are stacked into one `Predictor.explain` call (`@serve.batch`,
grouped by method and target), and each answer is scored and drawn in a thread again
(`Predictor.explanation_of`). `max_batch_size` and `batch_wait_timeout_s` are runtime knobs:
serve_config.yaml's `user_config` changes them without restarting replicas (`reconfigure`).

`PhotoExplainer` is the plain class; `drray.serve.deployments` makes it the Explainer deployment
(`@serve.batch` needs a Serve replica: one PhotoExplainer per process).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from ray import serve

from drray.serve.refusals import Refusal, RefusalError, check_method, check_target, from_image_error

log = logging.getLogger(__name__)

USER_CONFIG = {"max_batch_size": (int, 1, "set_max_batch_size"),
               "batch_wait_timeout_s": (float, 0, "set_batch_wait_timeout_s")}
"""Serve `user_config` keys of the Explainer: their type, least value and the `@serve.batch` setter they go to."""


@dataclass
class _Job:
    item: Any  # drray.inference.PhotoInput
    method: str
    target: str


@dataclass
class _Done:
    out: Any  # drray.inference.Explanations of the job's group
    index: int
    batch_size: int
    model_ms: float


class PhotoExplainer:
    """Explains uploaded photographs with the model in `args.model_dir` (an `AppArgs`)."""

    def __init__(self, args: Any):
        from drray.inference import Predictor

        cfg = args.serve_config()
        if cfg.torch_threads:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        self.predictor = Predictor.from_model_dir(args.model_dir, methods=cfg.methods,
                                                  max_pixels=cfg.max_image_pixels)
        self.methods = list(self.predictor.methods)
        # Decoding, scoring and PNG encoding run here, off the replica's event loop; the model
        # runs here too, one batch at a time (the predictor's lock).
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="drray-explainer")
        self._warm_up()
        self._batching: dict[str, Any] = {}
        self.reconfigure({"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s})
        log.info("Explainer ready: model %s, methods %s", self.predictor.model_id, self.methods)

    def _warm_up(self) -> None:
        """One explanation at start-up, so the first request does not pay for hooks and allocations."""
        import numpy as np

        size = self.predictor.input_size
        self.predictor.explain(np.zeros((1, size, size, 3), np.uint8), methods=self.methods[:1])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's `user_config`: max_batch_size, batch_wait_timeout_s."""
        unknown = sorted(set(user_config) - set(USER_CONFIG))
        if unknown:
            raise ValueError(f"unknown Explainer user_config key(s) {unknown}; known: {', '.join(USER_CONFIG)}")
        checked = {}
        for key, value in user_config.items():  # all checked before any is applied: no half-applied config
            kind, least, _ = USER_CONFIG[key]
            checked[key] = kind(value)
            if checked[key] < least:
                raise ValueError(f"Explainer user_config {key} must be >= {least}, got {checked[key]}")
        for key, value in checked.items():
            getattr(self._explain_batch, USER_CONFIG[key][2])(value)
        self._batching.update(checked)

    def batching(self) -> dict[str, Any]:
        """The batching in force: what `reconfigure` was last given (Serve offers setters, not getters)."""
        return dict(self._batching)

    def describe(self) -> dict[str, Any]:
        """`Predictor.describe()` plus the methods and batching this replica serves."""
        return {**self.predictor.describe(), "methods": self.methods, **self.batching()}

    def ping(self) -> str:
        return self.predictor.model_id

    async def explain(self, data: bytes, *, method: str | None = None, target: Any = "pred",
                      ben_graham: bool | None = None, overlay_alpha: float = 0.4, overlay_size: int | None = None,
                      keep_arrays: bool = False) -> dict[str, Any] | Refusal:
        """One encoded photograph -> `Predictor.explain_image`'s dict, or the `Refusal` saying why not.

        keep_arrays: also return the arrays the page draws with (`cam`, `overlay` and `background`,
        the photograph under the overlay); without it only plain values and PNGs cross the handle.
        """
        from drray.data.images import ImageError

        start = time.perf_counter()
        try:
            name, tgt = check_method(method, self.methods), check_target(target)
        except RefusalError as e:
            return e.refusal
        loop = asyncio.get_running_loop()
        try:
            item = await loop.run_in_executor(self._pool, partial(self.predictor.prepare_photo, data,
                                                                  ben_graham=ben_graham))
        except ImageError as e:
            return from_image_error(e)
        queued = time.perf_counter()
        done: _Done = await self._explain_batch(_Job(item, name, tgt))
        t = time.perf_counter()
        result = await loop.run_in_executor(self._pool, partial(
            self.predictor.explanation_of, item, done.out, done.index, name, tgt,
            overlay_alpha=overlay_alpha, overlay_size=overlay_size, keep_background=keep_arrays))
        if not keep_arrays:
            for key in ("cam", "overlay"):
                result.pop(key, None)
        now = time.perf_counter()
        result["batch_size"] = done.batch_size
        result["timings_ms"] = {k: round(v, 2) for k, v in {
            "preprocess_ms": item.preprocess_ms,
            "queue_ms": max(0.0, (t - queued) * 1000 - done.model_ms),
            "model_ms": done.model_ms,
            "render_ms": (now - t) * 1000,
            "total_ms": (now - start) * 1000,
        }.items()}
        return result

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.01)
    async def _explain_batch(self, jobs: list[_Job]) -> list[_Done]:
        """Stack the network inputs of the waiting jobs, one `Predictor.explain` per (method, target)."""
        import numpy as np

        groups: dict[tuple[str, str], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.method, job.target), []).append(i)
        answers: list[_Done | None] = [None] * len(jobs)
        loop = asyncio.get_running_loop()
        for (method, target), members in groups.items():
            images = np.stack([jobs[i].item.prepared.image for i in members])
            t = time.perf_counter()
            out = await loop.run_in_executor(self._pool, partial(self.predictor.explain, images,
                                                                 methods=[method], target=target))
            model_ms = (time.perf_counter() - t) * 1000
            for k, i in enumerate(members):
                answers[i] = _Done(out, k, len(members), model_ms)
        return answers  # type: ignore[return-value]
