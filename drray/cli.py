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
    from drray.ingest import ingest
    from drray.synth import generate

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
    from drray.ingest import NoUsableImages, ingest

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


# ----------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from drray.demo import run_demo
    from drray.recipes import recipe_path

    if args.config is None:
        args.config = recipe_path("synth_demo")
    cfg = _load_config(args)
    run_demo(cfg, Path(args.out), serve=not args.no_serve)
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

    p = sub.add_parser(
        "demo", help="the main job on the built-in synthetic set (recipe: configs/synth_demo.yaml)"
    )
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--no-serve", action="store_true", help="stop after the batch steps")
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
