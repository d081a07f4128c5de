"""`drray demo`: the main job on the built-in synthetic set, end to end, into one run directory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from drray.config import Config

log = logging.getLogger(__name__)


def _step(name: str):
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def run_demo(cfg: Config, out: Path, serve: bool = True) -> Path:
    """synth -> ingest -> summary, writing into `out` (default runs/demo/)."""
    from drray.ingest import ingest
    from drray.synth import generate

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json())

    t = _step(f"synth: {cfg.synth.n} photographs at {cfg.synth.size} px (seed {cfg.synth.seed})")
    data_dir = out / "synth"
    generate(cfg.synth, data_dir)
    print(f"   {time.perf_counter() - t:.1f}s -> {data_dir}")

    t = _step("ingest")
    result = ingest("synth", data_dir, out, seed=cfg.data.seed, split_fractions=cfg.data.split_fractions,
                    max_pixels=cfg.data.max_image_pixels)
    print(result.summary())
    print(f"   {time.perf_counter() - t:.1f}s -> {result.manifest_path}, {result.errors_path}")
    return out
