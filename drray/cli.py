"""`drray` command line: each subcommand parses flags, builds a typed config and calls one function.

Every subcommand accepts `--config FILE` (a YAML recipe) and trailing `section.field=value`
overrides, and prints where it wrote. `python -m drray` is the same CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from drray.config import Config

log = logging.getLogger("drray")


class UsageError(Exception):
    """A problem with what the user asked for: printed without a traceback, exit status 2."""


def _load_config(args: argparse.Namespace) -> Config:
    return Config.from_yaml(args.config, args.overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="override a config field, e.g. train.epochs=3")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


# ---------------------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    from drray.data.ingest import ingest
    from drray.data.synth import generate

    cfg = _load_config(args)
    s = cfg.synth
    for name in ("n", "size", "seed"):
        v = getattr(args, name)
        if v is not None:
            setattr(s, name, v)
    s.__post_init__()
    out = Path(args.out)
    labels = generate(s, out)
    result = ingest("synth", out, out, seed=cfg.data.seed, split_fractions=cfg.data.split_fractions,
                    max_pixels=cfg.data.max_image_pixels)
    print(f"wrote {s.n} synthetic photographs ({s.size} px, seed {s.seed}) to {out}/images, masks to {out}/masks")
    print(f"labels: {labels}")
    print(result.summary())
    return 0


# --------------------------------------------------------------------------------------- ingest
def cmd_ingest(args: argparse.Namespace) -> int:
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
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------------- train / tune
def _manifest_and_out(args: argparse.Namespace, cfg: Config) -> tuple[str, Path]:
    manifest = args.manifest or cfg.data.manifest
    if not Path(manifest).is_file() and "://" not in manifest:
        raise UsageError(f"manifest {manifest!r} does not exist; write one with `drray ingest` or `drray synth`")
    # A run directory holds its manifest, trials, model and explanations side by side.
    out = Path(args.out) if args.out else Path(manifest).parent
    return manifest, out


def cmd_train(args: argparse.Namespace) -> int:
    from drray.training.train import train

    cfg = _load_config(args)
    manifest, out = _manifest_and_out(args, cfg)
    result = train(cfg, out, manifest)
    print(result.summary())
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from drray.training.tune import tune

    cfg = _load_config(args)
    manifest, out = _manifest_and_out(args, cfg)
    result = tune(cfg, out, manifest)
    print(result.summary())
    return 0


# -------------------------------------------------------------------------------------- explain
def cmd_explain(args: argparse.Namespace) -> int:
    from drray.explain.pipeline import explain

    cfg = _load_config(args)
    manifest, out = _manifest_and_out(args, cfg)
    model_dir = Path(args.model) if args.model else out / "model"
    if not (model_dir / "model.json").is_file():
        raise UsageError(f"{str(model_dir)!r} is not a model dir (no model.json); train one with `drray tune`")
    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    split = args.split.split(",") if args.split else None
    result = explain(manifest, model_dir, out, methods=methods, cam=cfg.cam, split=split,
                     max_pixels=cfg.data.max_image_pixels)
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------------------- query
def cmd_query(args: argparse.Namespace) -> int:
    import duckdb
    import pandas as pd

    from drray.evaluate.query import query

    try:
        df = query(args.sql, args.run)
    except duckdb.Error as e:
        raise UsageError(str(e)) from None
    if args.output:
        out = Path(args.output)
        df.to_parquet(out) if out.suffix == ".parquet" else df.to_csv(out, index=False)
        print(f"wrote {len(df)} rows to {out}")
    else:
        with pd.option_context("display.max_rows", args.max_rows, "display.width", 200,
                               "display.max_columns", 30, "display.max_colwidth", 40):
            print(df.to_string(index=False, max_rows=args.max_rows))
    return 0

# ----------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from drray.demo import run_demo
    from drray.recipes import recipe_path

    if args.config is None:
        args.config = recipe_path("synth_demo")
    cfg = _load_config(args)
    run_demo(cfg, Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
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
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("ingest", help="build manifest.parquet + errors.parquet from a dataset on disk")
    p.add_argument("--source", required=True, choices=SOURCES, help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--csv-path", dest="csv_path", default=None, help="csv source: labels file (default ROOT/labels.csv)")
    p.add_argument("--path-column", dest="path_column", default=None, help="csv source: image path column")
    p.add_argument("--label-column", dest="label_column", default=None, help="csv source: grade column")
    p.add_argument("--id-column", dest="id_column", default=None, help="csv source: image id column")
    p.add_argument("--patient-column", dest="patient_column", default=None, help="csv source: patient id column")
    _add_common(p)
    p.set_defaults(func=cmd_ingest)

    for name, func, help_ in (
        ("train", cmd_train, "train one backbone with Ray Train; writes OUT/model"),
        ("tune", cmd_tune, "search backbones and hyper-parameters with Ray Tune; writes OUT/trials.parquet, OUT/model"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--manifest", default=None, help="manifest.parquet (default data.manifest)")
        p.add_argument("--out", default=None, help="run directory (default: the manifest's folder)")
        _add_common(p)
        p.set_defaults(func=func)

    p = sub.add_parser("explain", help="predict + CAM + localisation scores over a manifest, into Parquet")
    p.add_argument("--manifest", default=None, help="manifest.parquet (default data.manifest)")
    p.add_argument("--model", default=None, help="model dir (default OUT/model)")
    p.add_argument("--methods", default=None,
                   help="comma-separated CAM methods, e.g. gradcam,gradcam++ (default cam.methods); '' predicts only")
    p.add_argument("--split", default=None, help="comma-separated splits to explain (default: all rows)")
    p.add_argument("--out", default=None, help="run directory (default: the manifest's folder)")
    _add_common(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("query", help="SQL (DuckDB) over a run directory's tables")
    p.add_argument("sql", help="e.g. \"select reason, count(*) from errors group by all\"")
    p.add_argument("--run", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--output", default=None, help="write the result to a .csv or .parquet file instead")
    p.add_argument("--max-rows", dest="max_rows", type=int, default=50, help="rows printed (default 50)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_query, config=None, overrides=[])

    p = sub.add_parser(
        "demo", help="the main job on the built-in synthetic set (recipe: configs/synth_demo.yaml)"
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    _add_common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        if getattr(args, "verbose", False):
            raise
        print(f"drray {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
