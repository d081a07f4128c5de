"""`drray demo`: the main job on the built-in synthetic set, end to end, into one run directory."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from drray.config import Config

log = logging.getLogger(__name__)


def _step(name: str) -> float:
    print(f"\n== {name}", flush=True)
    return time.perf_counter()


def _done(start: float, *where: object) -> None:
    print(f"   {time.perf_counter() - start:.1f}s -> {', '.join(str(w) for w in where)}", flush=True)


def run_demo(cfg: Config, out: Path) -> Path:
    """synth -> ingest -> tune -> test-split metrics -> explain, all into `out` (default runs/demo/)."""
    from drray.explain.pipeline import explain
    from drray.data.ingest import ingest
    from drray.data.synth import generate
    from drray.training.train import evaluate, write_json
    from drray.training.tune import tune

    begin = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # Keep Ray's trial folders inside the run directory, wherever --out points.
    cfg.train.storage_path = str((out / "ray_results").resolve())
    (out / "config.json").write_text(cfg.to_json())

    t = _step(f"synth: {cfg.synth.n} photographs at {cfg.synth.size} px (seed {cfg.synth.seed})")
    data_dir = out / "synth"
    generate(cfg.synth, data_dir)
    _done(t, data_dir)

    t = _step("ingest")
    ingested = ingest("synth", data_dir, out, seed=cfg.data.seed, split_fractions=cfg.data.split_fractions,
                      max_pixels=cfg.data.max_image_pixels)
    print(ingested.summary())
    _done(t, ingested.manifest_path, ingested.errors_path)
    manifest = str(ingested.manifest_path)

    t = _step(f"tune: {', '.join(cfg.tune.backbones)} x heads {cfg.tune.heads} x lr {cfg.tune.lrs}")
    tuned = tune(cfg, out, manifest)
    print(tuned.summary())
    _done(t, tuned.trials_path, tuned.model_dir)

    t = _step("test split: metrics of the best model")
    metrics = evaluate(tuned.model_dir, manifest, split="test")
    write_json(out / "test_metrics.json", metrics)
    print(f"   test QWK {metrics['qwk']:.3f} (95% CI {metrics['qwk_ci_low']:.3f}-{metrics['qwk_ci_high']:.3f}) "
          f"on {metrics['n']} images; accuracy {metrics['accuracy']:.3f}; "
          f"referable AUC {_fmt(metrics.get('referable_auc'))}")
    _done(t, out / "test_metrics.json")

    t = _step(f"explain: test split, methods {', '.join(cfg.cam.methods)}")
    explained = explain(manifest, tuned.model_dir, out, cam=cfg.cam, split="test",
                        max_pixels=cfg.data.max_image_pixels)
    print(explained.summary())
    _done(t, explained.explanations_dir)

    total = time.perf_counter() - begin
    (out / "demo_summary.json").write_text(json.dumps(
        {"seconds": round(total, 1), "test_qwk": metrics["qwk"], "test_images": metrics["n"],
         "model_id": explained.model_id}, indent=2))
    print(f"\ndemo finished in {total / 60:.1f} min; run directory {out}/")
    print(f"   query it: duckdb -c \"select cam_method, avg(pointing_hit::int) from "
          f"read_parquet('{out}/explanations/**/*.parquet', hive_partitioning=true) where label >= 1 group by 1\"")
    return out


def _fmt(x: object) -> str:
    return "n/a" if x is None else f"{x:.3f}"
