"""Does `drray audit` find a shortcut it was not told about, confirm it by intervention, and stay quiet on a clean run?

For each artefact of drray.data.synth.artefacts (and a clean control) this script makes a synthetic
set, ingests it, stamps the artefact on every referable train / val photograph and on a random
half of the test photographs whatever their grade (`mark_shortcut`), trains a model on it,
explains the test split, audits the run, and prints, side by side:

- whether the model uses the artefact: referable calls on marked vs unmarked grade 0-1 and 2-4 test photographs;
- the suspect strategies the audit found, whether one sits at the artefact (its place overlaps the
  artefact's cells, mirrored for left eyes), and what removing its place changed against the control;
- the audit's cost per map beside the explain step's, and the descriptors' cost per map.

    python benchmarks/audit_shortcuts.py                          # every kind, the default sizes
    python benchmarks/audit_shortcuts.py --kinds clean,notch --n 600 --epochs 8
    python benchmarks/audit_shortcuts.py --smoke-test             # tiny, for the test suite
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("clean", "notch", "caption", "reflection", "dark_edge", "hidden:1", "hidden:2")
"""`hidden:N`: the polygon drawn from seed N, whose shape, size, colour and place nothing in drray knows."""


def artefact_cells(kind: str, size: int, seed: int) -> np.ndarray:
    """(GRID*GRID,) bool: the grid cells the artefact covers in a right eye, and in a left eye (mirrored), grown by one."""
    import cv2

    from drray.data.synth.artefacts import stamp
    from drray.scores.descriptors import GRID

    blank = np.full((size, size, 3), 128, np.uint8)
    diff = np.abs(stamp(blank, kind, seed).astype(int) - blank).sum(axis=2) > 30
    cells = cv2.resize(diff.astype(np.float32), (GRID, GRID), interpolation=cv2.INTER_AREA) > 0.05
    cells = cells | cells[:, ::-1]
    return cv2.dilate(cells.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool).ravel()


def config(args, out: Path):
    from drray.config import Config

    cfg = Config.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "synth_demo.yaml", [
        f"synth.n={args.n}", f"synth.size={args.size}", f"synth.seed={args.seed}",
        f"data.manifest={out / 'manifest.parquet'}", f"data.preprocess.image_size={args.size}",
        f"train.epochs={args.epochs}", "train.early_stopping_patience=0", f"train.materialize={str(args.n <= 1500).lower()}",
        "cam.methods=[gradcam]", f"cam.target_layer={args.layer}", "explain.select_layer=false",
        f"audit.seed={args.seed}",
    ])
    return cfg


def one(name: str, args) -> dict:
    from drray.audit.run import audit
    from drray.data.ingest import ingest
    from drray.data.synth import generate
    from drray.data.synth.artefacts import mark_shortcut
    from drray.evaluate.query import query
    from drray.explain.pipeline import explain
    from drray.rundir import RunDir
    from drray.training.train import train

    kind, _, art_seed = name.partition(":")
    art_seed = int(art_seed) if art_seed else args.seed
    out = Path(args.out) / name.replace(":", "_")
    run = RunDir(out)
    cfg = config(args, out)
    made = out / "made.json"
    if args.reuse and made.exists():  # audit again a run this script made before (a new rule, the same models)
        first = json.loads(made.read_text())
    else:
        shutil.rmtree(out, ignore_errors=True)
        generate(cfg.synth, run.synth)
        ingest("synth", run.synth, run.root, seed=cfg.data.seed, split_fractions=cfg.data.split_fractions)
        if kind != "clean":
            mark_shortcut(run.manifest, kind, seed=art_seed)[["image_id", "marked"]].to_parquet(out / "marked.parquet")
        t0 = time.perf_counter()
        trained = train(cfg, run.root, run.manifest)
        train_s = time.perf_counter() - t0
        ex = explain(run.manifest, run.model, run.root, methods=["gradcam"], cam=cfg.cam, job=cfg.explain,
                     split="test", decode_cpus=cfg.data.decode_cpus)
        first = {"val_qwk": trained.metrics.get("qwk"), "train_s": round(train_s, 1),
                 "explain_s_per_image": ex.seconds / max(ex.images, 1)}
        made.write_text(json.dumps(first))
    marked = pd.read_parquet(out / "marked.parquet") if kind != "clean" else None
    result = audit(run.root, cfg.audit, decode_cpus=cfg.data.decode_cpus)
    grading = query("select avg((pred = label)::int) as acc from explanations", run.root)["acc"].iloc[0]
    row = {"kind": name, **first, "test_accuracy": float(grading),
           "audit_s_per_map": (result.seconds.get("assign", 0) + result.seconds.get("fit", 0)) / max(result.rows, 1),
           "intervene_s": result.seconds.get("intervene"), "maps": result.rows,
           "strategies": int((result.strategies["grouping"] == "grade").sum())}
    if marked is not None:
        df = query("select image_id, label, referable_prob from explanations", run.root).merge(
            marked[["image_id", "marked"]], on="image_id")
        for lo, hi in ((0, 1), (2, 4)):
            g = df[(df["label"] >= lo) & (df["label"] <= hi)]
            for m in (True, False):
                sel = g[g["marked"] == m]
                row[f"referable_g{lo}{hi}_{'marked' if m else 'unmarked'}"] = float((sel["referable_prob"] >= 0.5).mean())
    cells = artefact_cells(kind, args.size, art_seed) if kind != "clean" else None
    suspects = []
    for _, s in result.suspects.iterrows():
        place = np.unpackbits(np.frombuffer(s["place_cells"], dtype=np.uint8))[:cells.size if cells is not None else 256]
        at = bool(cells is not None and (place.astype(bool) & cells).any())
        suspects.append({"strategy": s["strategy"], "images": int(s["images"]), "place": s["place"],
                         "frame": s["frame"], "grouping": s["grouping"],
                         "at_artefact": at, "changed_removed": s["changed_removed"],
                         "changed_control": s["changed_control"], "confirmed": s["confirmed"]})
    row["suspects"] = suspects
    row["detected"] = any(s["at_artefact"] for s in suspects)
    row["confirmed"] = any(s["at_artefact"] and bool(s["confirmed"]) for s in suspects)
    row["false_alarms"] = sum(not s["at_artefact"] for s in suspects)
    return row


def audit_at_scale(source: Path, copies: int, out: Path) -> dict:
    """The audit's cost per map on `copies` copies of a run's explanations (new image ids), without intervention."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from drray.audit.run import audit
    from drray.evaluate.query import open_table
    from drray.rundir import RunDir

    shutil.rmtree(out, ignore_errors=True)
    table = open_table(RunDir(source).explanations, partitioned=True).to_table()
    table = table.drop_columns([c for c in ("dataset", "split") if c in table.column_names])
    target = out / "explanations" / "dataset=synth" / "split=test"
    target.mkdir(parents=True)
    ids = table.column("image_id").to_pylist()
    for c in range(copies):
        t = table.set_column(table.column_names.index("image_id"), "image_id", pa.array([f"{i}_{c}" for i in ids]))
        pq.write_table(t, target / f"part-{c:05d}.parquet")
    t0 = time.perf_counter()
    result = audit(out, intervene=False)
    total = time.perf_counter() - t0
    return {"maps": result.rows, "seconds": round(total, 1), "ms_per_map": 1000 * total / result.rows,
            "fit_s": round(result.seconds["fit"], 1), "assign_s": round(result.seconds["assign"], 1)}


def descriptor_cost(size: int, n: int = 200) -> float:
    """Milliseconds per map of drray.scores.descriptors.map_descriptors at the input size."""
    from drray.data.geometry import Geometry
    from drray.scores.descriptors import map_descriptors

    rng = np.random.default_rng(0)
    g = Geometry(0, 0, size, size, size, True, size / 2, size / 2, size * 0.45, 0, size, 0, size)
    maps = rng.random((n, size, size)).astype(np.float32)
    t0 = time.perf_counter()
    for m in maps:
        map_descriptors(m, g, "left")
    return (time.perf_counter() - t0) / n * 1000


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layer", default="backbone.layer2")
    p.add_argument("--out", default="/tmp/drray_audit_shortcuts")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--scale", type=int, default=0, help="also time the audit on this many copies of the first "
                   "run's explanations (no intervention)")
    p.add_argument("--reuse", action="store_true", help="audit again the runs a previous call made (same args)")
    p.add_argument("--smoke-test", action="store_true")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.kinds, args.n, args.size, args.epochs = "notch", 96, 64, 1
    import ray

    ray.init(num_cpus=None, include_dashboard=False, log_to_driver=False)
    rows = [one(k.strip(), args) for k in args.kinds.split(",") if k.strip()]
    ms = descriptor_cost(args.size)
    print(f"descriptors: {ms:.2f} ms per map at {args.size} px")
    if args.scale:
        first = Path(args.out) / rows[0]["kind"].replace(":", "_")
        scaled = audit_at_scale(first, args.scale, Path(args.out) / "scale")
        print(f"audit at scale ({rows[0]['kind']} maps x {args.scale}): {json.dumps(scaled)}")
    for r in rows:
        print(json.dumps(r, default=float))
    print(f"{'kind':<11} {'val QWK':>7} {'ref g0-1 m/u':>13} {'ref g2-4 m/u':>13} {'suspects':>8} {'at art.':>7} "
          f"{'confirmed':>9} {'removed/ctrl changed':>21} {'false':>5} {'explain s/img':>13} {'audit ms/map':>12}")
    for r in rows:
        at = [s for s in r["suspects"] if s["at_artefact"]]
        best = max(at, key=lambda s: (bool(s["confirmed"]), s["changed_removed"] - s["changed_control"]), default=None)
        change = f"{best['changed_removed']:.2f}/{best['changed_control']:.2f}" if best and best["changed_removed"] == best["changed_removed"] else "-"
        g01 = f"{r.get('referable_g01_marked', float('nan')):.2f}/{r.get('referable_g01_unmarked', float('nan')):.2f}"
        g24 = f"{r.get('referable_g24_marked', float('nan')):.2f}/{r.get('referable_g24_unmarked', float('nan')):.2f}"
        print(f"{r['kind']:<11} {r['val_qwk'] or float('nan'):>7.3f} {g01:>13} {g24:>13} {len(r['suspects']):>8} "
              f"{str(r['detected']):>7} {str(r['confirmed']):>9} {change:>21} {r['false_alarms']:>5} "
              f"{r['explain_s_per_image']:>13.3f} {1000 * r['audit_s_per_map']:>12.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, default=float, indent=1))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
