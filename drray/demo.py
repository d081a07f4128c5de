"""`drray demo`: the main job on the built-in synthetic set, end to end, into one run directory."""

from __future__ import annotations

import os
import time

from drray import storage
from drray.config import Config
from drray.console import Console
from drray.rundir import RunDir

STEPS = ("synth", "ingest", "tune", "explain", "audit", "evaluate", "report")


def run_demo(cfg: Config, out: str | os.PathLike, console: Console | None = None) -> RunDir:
    """synth -> ingest -> tune -> explain -> audit -> evaluate -> report, all into `out` (default runs/demo/)."""
    from drray.audit.run import audit
    from drray.data.ingest import ingest
    from drray.data.synth import generate
    from drray.evaluate.evaluate import evaluate_run, headline
    from drray.evaluate.report import report
    from drray.explain.pipeline import explain
    from drray.inference import default_methods
    from drray.models.card import read_card
    from drray.training.tune import tune

    console = console or Console()
    run = RunDir(out)
    begin = time.perf_counter()
    storage.make_dirs(run.root)
    storage.write_text(run.config, cfg.to_json() + "\n")
    n = len(STEPS)

    step = console.step(1, n, "synth", f"{cfg.synth.n} photographs at {cfg.synth.size} px (seed {cfg.synth.seed})")
    generate(cfg.synth, run.synth)
    step.done("done", run.synth)

    step = console.step(2, n, "ingest", "manifest, patient-level splits")
    ingested = ingest("synth", run.synth, run.root, seed=cfg.data.seed, split_fractions=cfg.data.split_fractions,
                      max_pixels=cfg.data.max_image_pixels)
    splits = ", ".join(f"{s} {ingested.n_by_split.get(s, 0)}" for s in ("train", "val", "test"))
    step.done(f"{ingested.n_rows} images ({splits}), {ingested.n_errors} errors", run.manifest)

    t = cfg.tune
    step = console.step(3, n, "tune", f"{', '.join(t.backbones)} x {', '.join(t.heads)} head x lr "
                                      f"{', '.join(f'{x:g}' for x in t.lrs)}, {cfg.train.epochs} epochs")
    tuned = tune(cfg, run.root, run.manifest, console=console)
    b = tuned.best
    step.done(f"best {b['backbone']} ({b['head']}): val QWK {b['best_val_qwk']:.3f} at epoch {b['best_epoch']} "
              f"of {len(tuned.trials)} trials", run.trials, run.model)
    if tuned.cam_selection is not None:
        console.print(f"{' ' * 16}{tuned.cam_selection.summary()}")

    methods = cfg.cam.methods if cfg.cam.methods is not None else default_methods(read_card(run.model), None)
    step = console.step(4, n, "explain", f"test split, {', '.join(methods)}")
    explained = explain(run.manifest, run.model, run.root, cam=cfg.cam, job=cfg.explain, split="test",
                        max_pixels=cfg.data.max_image_pixels, decode_cpus=cfg.data.decode_cpus, console=console)
    errors = sum(explained.errors.values())
    step.done(f"{explained.rows_written} rows for {explained.images} images, {errors} errors "
              f"({explained.images / max(explained.seconds, 1e-9):.1f} images/s)", run.explanations)

    step = console.step(5, n, "audit", "strategies of the maps per predicted grade; suspects confirmed by intervention")
    audited = audit(run.root, cfg.audit, max_pixels=cfg.data.max_image_pixels, decode_cpus=cfg.data.decode_cpus)
    summary = audited.summary().splitlines()
    step.done(summary[0], run.strategies)
    for line in summary[1:4]:
        console.print(f"{' ' * 16}{line.strip()}")
    if len(summary) > 4:
        console.print(f"{' ' * 16}... and {len(summary) - 4} more suspect strategies: drray query \"select * from "
                      f"strategies where verdict = 'suspect'\" --run {run.root}")

    step = console.step(6, n, "evaluate", "grading and localisation on the test split, the three observations")
    metrics = evaluate_run(run.root)
    step.done(headline(metrics), run.metrics_json)
    for line in metrics.get("observations", []):
        console.print(f"{' ' * 16}{line}")

    step = console.step(7, n, "report", "metrics, observations and galleries in one HTML file")
    path = report(run.root, metrics=metrics)
    step.done("done", path)

    total = time.perf_counter() - begin
    storage.write_json(run.summary, {"seconds": round(total, 1), "test_qwk": metrics.get("qwk"),
                                     "test_images": metrics.get("n"), "model_id": explained.model_id,
                                     "pointing_hit_rate": metrics.get("pointing_hit_rate"),
                                     "suspect_strategies": int(len(audited.suspects)),
                                     "observations": metrics.get("observations", [])})
    console.print(f"demo finished in {total / 60:.1f} min; run directory {run.root}")
    console.print(f"query it: drray query \"select cam_method, avg(pointing_hit::int) as hit from explanations "
                  f"where label >= 1 group by 1\" --run {run.root}")
    return run


def _fmt(x: object) -> str:
    return "n/a" if x is None else f"{x:.3f}"
