"""`drray` command line: each subcommand parses flags, builds a typed config and calls one function.

Every subcommand accepts `--config FILE` (a YAML recipe) and trailing `section.field=value`
overrides, and prints where it wrote. `python -m drray` is the same CLI. Commands that run on
Ray print one line per step; Ray's own output goes to OUT/logs/drray.log (drray.console).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Callable, Sequence

from drray.config import Config
from drray.console import Console

log = logging.getLogger("drray")


class UsageError(Exception):
    """A problem with what the user asked for: printed without a traceback, exit status 2."""


def _load_config(args: argparse.Namespace) -> Config:
    return Config.from_yaml(args.config, args.overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="override a config field, e.g. train.epochs=3")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _quiet_ray_data() -> None:
    """Ray Data draws a bar per internal operator; the console shows drray's own bar instead."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def _disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


# ---------------------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace, console: Console) -> int:
    from drray.data.ingest import ingest
    from drray.data.synth import generate

    cfg = _load_config(args)
    s = cfg.synth
    for name in ("n", "size", "seed"):
        v = getattr(args, name)
        if v is not None:
            setattr(s, name, v)
    s.__post_init__()
    generate(s, args.out)
    result = ingest("synth", args.out, args.out, seed=cfg.data.seed, split_fractions=cfg.data.split_fractions,
                    max_pixels=cfg.data.max_image_pixels)
    console.print(f"wrote {s.n} synthetic photographs ({s.size} px, seed {s.seed}) to {args.out}/images, "
                  f"masks to {args.out}/masks")
    console.print(result.summary())
    return 0


# --------------------------------------------------------------------------------------- ingest
def cmd_ingest(args: argparse.Namespace, console: Console) -> int:
    from drray.data.ingest import NoUsableImages, ingest

    cfg = _load_config(args)
    kwargs = {}
    for name in ("csv_path", "path_column", "label_column", "id_column", "patient_column"):
        v = getattr(args, name)
        if v is not None:
            kwargs[name] = v
    try:
        result = ingest(args.source, args.root, args.out, seed=cfg.data.seed,
                        split_fractions=cfg.data.split_fractions, max_pixels=cfg.data.max_image_pixels, **kwargs)
    except NoUsableImages as e:
        raise UsageError(str(e)) from None
    console.print(result.summary())
    return 0


# ---------------------------------------------------------------------------------- train / tune
def _manifest_and_out(args: argparse.Namespace, cfg: Config) -> tuple[str, str]:
    from drray import storage

    manifest = args.manifest or cfg.data.manifest
    if not storage.is_file(manifest):
        raise UsageError(f"manifest {manifest!r} does not exist; write one with `drray ingest` or `drray synth`")
    # A run directory holds its manifest, trials, model and explanations side by side.
    return manifest, args.out or _parent(manifest)


def _parent(location: str) -> str:
    import os
    import posixpath

    from drray import storage

    return posixpath.dirname(location) if storage.is_uri(location) else os.path.dirname(os.path.abspath(location))


def cmd_train(args: argparse.Namespace, console: Console) -> int:
    from drray.training.train import train

    cfg = _load_config(args)
    manifest, out = _manifest_and_out(args, cfg)
    result = train(cfg, out, manifest)
    console.print(result.summary())
    return 0


def cmd_tune(args: argparse.Namespace, console: Console) -> int:
    from drray.training.tune import tune

    cfg = _load_config(args)
    manifest, out = _manifest_and_out(args, cfg)
    result = tune(cfg, out, manifest, console=console)
    console.print(result.summary())
    return 0


# -------------------------------------------------------------------------------------- explain
def cmd_explain(args: argparse.Namespace, console: Console) -> int:
    from drray import storage
    from drray.explain.pipeline import explain
    from drray.models.card import CARD_FILE
    from drray.rundir import RunDir

    cfg = _load_config(args)
    manifest, out = _manifest_and_out(args, cfg)
    model_dir = args.model or RunDir(out).model
    if not storage.is_file(storage.join(model_dir, CARD_FILE)):
        raise UsageError(f"{str(model_dir)!r} is not a model dir (no {CARD_FILE}); train one with `drray tune`")
    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    split = args.split.split(",") if args.split else None
    if args.select_layer:
        from drray.explain.select_layer import select_cam_target

        selection = select_cam_target(manifest, model_dir, split=cfg.explain.select_split, cam=cfg.cam,
                                      job=cfg.explain, max_pixels=cfg.data.max_image_pixels, seed=cfg.data.seed)
        console.print(selection.summary())
    result = explain(manifest, model_dir, out, methods=methods, cam=cfg.cam, job=cfg.explain, split=split,
                     max_pixels=cfg.data.max_image_pixels, decode_cpus=cfg.data.decode_cpus, console=console)
    console.print(result.summary())
    return 0


# ----------------------------------------------------------------------------- evaluate / report
def cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    from drray.evaluate.evaluate import evaluate_run, headline
    from drray.rundir import RunDir

    out = args.out or args.run
    metrics = evaluate_run(args.run, out)
    console.print(headline(metrics))
    for line in metrics.get("observations", []):
        console.print(f"  {line}")
    console.print(f"wrote {RunDir(out).metrics_json} and {RunDir(out).metrics}")
    return 0


def cmd_audit(args: argparse.Namespace, console: Console) -> int:
    from drray.audit.run import audit
    from drray.rundir import RunDir

    cfg = _load_config(args)
    result = audit(args.run, cfg.audit, model_dir=args.model, manifest=args.manifest, intervene=not args.no_intervene,
                   max_pixels=cfg.data.max_image_pixels, decode_cpus=cfg.data.decode_cpus)
    console.print(result.summary())
    run = RunDir(args.run)
    console.print(f"wrote {run.strategies} and {run.strategy_of}"
                  + (f" and {run.interventions}" if result.interventions is not None else ""))
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from drray.evaluate.report import report

    path = report(args.run, args.out)
    console.print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------- query
def cmd_query(args: argparse.Namespace, console: Console) -> int:
    import duckdb

    from drray.evaluate.query import query, write_result

    try:
        df = query(args.sql, args.run)
    except duckdb.Error as e:
        raise UsageError(str(e)) from None
    console.print(write_result(df, args.format, args.output, args.max_rows))
    return 0


# ---------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from drray import storage
    from drray.models.card import CARD_FILE

    cfg = _load_config(args)
    model_dir = args.model or cfg.serve.model_dir
    if not storage.is_file(storage.join(model_dir, CARD_FILE)):
        raise UsageError(f"{str(model_dir)!r} is not a model dir (no {CARD_FILE}); train one with `drray demo` "
                         "or `drray tune`, or name one with --model")
    serve_and_wait(console, model_dir, cfg, args.run)
    return 0


def serve_and_wait(console: Console, model_dir: str, cfg: Config, run_dir: str | None) -> None:
    """Start the live explanations, say where they are, serve until Ctrl-C."""
    import ray

    from drray.serve.run import run_server, stop_server

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    # `kill` and container stops send SIGTERM: stop as cleanly as on Ctrl-C.
    signal.signal(signal.SIGTERM, interrupt)
    started_ray = not ray.is_initialized()
    url = run_server(model_dir, cfg.serve, run_dir=run_dir, block=False)
    console.print(f"serving {model_dir}: page {url}/ui, API {url}/api/v1/explain (docs {url}/docs); Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        stop_server(started_ray)


# ----------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from drray.demo import run_demo
    from drray.recipes import recipe_path

    if args.config is None:
        args.config = recipe_path("synth_demo")
    cfg = _load_config(args)
    run = run_demo(cfg, args.out, console)
    if not args.no_serve:
        serve_and_wait(console, run.model, cfg, run.root)
    return 0


# ------------------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    from drray.evaluate.query import FORMATS
    from drray.rundir import DEFAULT, DEFAULT_RUN
    from drray.schema import SOURCES

    parser = argparse.ArgumentParser(
        prog="drray",
        description="Diabetic-retinopathy grading with Grad-CAM explanations at archive scale, on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="generate procedural fundus photographs with lesion masks")
    p.add_argument("--n", type=int, default=None, help="number of images (synth.n)")
    p.add_argument("--size", type=int, default=None, help="side in pixels (synth.size)")
    p.add_argument("--seed", type=int, default=None, help="seed (synth.seed)")
    p.add_argument("--out", required=True, help="output directory")
    _add_common(p)
    p.set_defaults(func=cmd_synth, run_dir="out")

    p = sub.add_parser("ingest", help="build manifest.parquet + ingest_errors.parquet from a dataset on disk")
    p.add_argument("--source", required=True, choices=SOURCES, help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--csv-path", dest="csv_path", default=None, help="csv source: labels file (default ROOT/labels.csv)")
    p.add_argument("--path-column", dest="path_column", default=None, help="csv source: image path column")
    p.add_argument("--label-column", dest="label_column", default=None, help="csv source: grade column")
    p.add_argument("--id-column", dest="id_column", default=None, help="csv source: image id column")
    p.add_argument("--patient-column", dest="patient_column", default=None, help="csv source: patient id column")
    _add_common(p)
    p.set_defaults(func=cmd_ingest, run_dir="out")

    for name, func, help_ in (
        ("train", cmd_train, "train one backbone with Ray Train; writes OUT/model"),
        ("tune", cmd_tune, "search backbones and hyper-parameters with Ray Tune; writes OUT/trials.parquet, OUT/model"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--manifest", default=None, help="manifest.parquet (default data.manifest)")
        p.add_argument("--out", default=None, help="run directory (default: the manifest's folder)")
        _add_common(p)
        p.set_defaults(func=func, run_dir="manifest_or_out")

    p = sub.add_parser("explain", help="predict + CAM + localisation scores over a manifest, into Parquet")
    p.add_argument("--manifest", default=None, help="manifest.parquet (default data.manifest)")
    p.add_argument("--model", default=None, help="model dir (default OUT/model)")
    p.add_argument("--methods", default=None,
                   help="comma-separated CAM methods, e.g. gradcam,gradcam++ (default cam.methods, else the model "
                        "card's chosen method); '' predicts only")
    p.add_argument("--split", default=None, help="comma-separated splits to explain (default: all rows)")
    p.add_argument("--select-layer", action="store_true",
                   help="first choose the CAM layer and method by the pointing game on explain.select_split's lesion "
                        "masks and write them into the model card")
    p.add_argument("--out", default=None, help="run directory (default: the manifest's folder)")
    _add_common(p)
    p.set_defaults(func=cmd_explain, run_dir="manifest_or_out")

    p = sub.add_parser("evaluate", help="metrics.json + metrics.parquet from a run's explanations; the observations")
    p.add_argument("--run", default=DEFAULT_RUN, help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--out", default=None, help="where metrics go (default: the run directory)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate, run_dir="out_or_run")

    p = sub.add_parser("audit", help="what the model looks at, without lesion masks: strategies of its maps, suspect "
                                     "shortcuts, confirmed by removing them")
    p.add_argument("--run", default=DEFAULT_RUN, help=f"run directory with explanations (default {DEFAULT_RUN})")
    p.add_argument("--model", default=None, help="model dir the intervention predicts with (default RUN/model)")
    p.add_argument("--manifest", default=None, help="manifest of the photographs (default RUN/manifest.parquet)")
    p.add_argument("--no-intervene", dest="no_intervene", action="store_true",
                   help="judge strategies only; do not predict suspect photographs again")
    _add_common(p)
    p.set_defaults(func=cmd_audit, run_dir="out_or_run", out=None)

    p = sub.add_parser("report", help="one self-contained HTML report of a run: metrics, observations, galleries")
    p.add_argument("--run", default=DEFAULT_RUN, help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--out", default=None, help="where report.html goes (default: the run directory)")
    _add_common(p)
    p.set_defaults(func=cmd_report, run_dir="out_or_run")

    p = sub.add_parser("query", help="SQL (DuckDB) over a run directory's tables")
    p.add_argument("sql", help="e.g. \"select reason, count(*) from errors group by all\"")
    p.add_argument("--run", default=DEFAULT_RUN, help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--format", default="table", choices=FORMATS, help="how the result is printed (default table)")
    p.add_argument("--output", default=None, help="write the result to FILE (.parquet, or text in --format)")
    p.add_argument("--max-rows", dest="max_rows", type=int, default=50, help="rows printed as a table (default 50)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_query, config=None, overrides=[], run_dir=None)

    p = sub.add_parser(
        "demo", help="the main job on the built-in synthetic set (recipe: configs/synth_demo.yaml)"
    )
    p.add_argument("--out", default=DEFAULT_RUN, help=f"run directory (default {DEFAULT_RUN})")
    p.add_argument("--no-serve", dest="no_serve", action="store_true",
                   help="stop after the report instead of serving the model (page and REST API) until Ctrl-C")
    _add_common(p)
    p.set_defaults(func=cmd_demo, run_dir="out")

    p = sub.add_parser("serve", help="live explanations: REST API and Gradio page on Ray Serve (until Ctrl-C)")
    p.add_argument("--model", default=None, help=f"model dir (default serve.model_dir: {DEFAULT.model})")
    p.add_argument("--run", default=None, help="run directory the Explore tab opens (default: the model's run)")
    _add_common(p)
    p.set_defaults(func=cmd_serve, run_dir="serve")
    return parser


def _run_dir(args: argparse.Namespace) -> str | None:
    """The folder whose logs/ gets this command's log file (None: the command writes no run)."""
    where = getattr(args, "run_dir", None)
    if where == "out":
        return args.out
    if where == "serve":
        from drray import storage

        model = args.model or Config.from_yaml(args.config, args.overrides).serve.model_dir
        if args.run is None and storage.is_dir(model):
            args.run = _parent(model)
        return args.run if args.run and storage.is_dir(args.run) else None
    if where == "out_or_run":
        from drray import storage

        target = args.out or args.run
        return target if storage.is_dir(args.run) else None  # a missing run is reported by the command
    if where == "manifest_or_out":
        if args.out:
            return args.out
        from drray import storage

        manifest = args.manifest or Config.from_yaml(args.config, args.overrides).data.manifest
        return _parent(manifest) if storage.is_file(manifest) else None  # the command says what is missing
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    console = Console()
    func: Callable[[argparse.Namespace, Console], int] = args.func
    try:
        run_dir = _run_dir(args)
        if run_dir is None:
            logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                                format="%(levelname)s %(name)s: %(message)s")
            return func(args, console)
        with console.capture(run_dir, verbose=verbose):
            _quiet_ray_data()
            try:
                code = func(args, console)
            finally:
                _disconnect()  # inside the capture: Ray's last worker lines belong in the log too
            console.print(f"log: {console.log_path}")
            return code
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        if verbose:
            raise
        print(f"drray {args.command}: error: {e}", file=sys.stderr)
        if console.log_path:
            print(f"drray {args.command}: details in {console.log_path}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
