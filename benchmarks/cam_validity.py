"""CAM validity: do the maps land on the lesions the model uses? Pointing game per family, stride and method.

One run, side by side: render drray's synthetic fundus set (lesion masks known exactly), ingest
it, train each family briefly on the train split (an in-process loop over drray's own training
step, `drray.training.loop.train_step`: the Ray Train loop's normalisation, augmentation, loss,
schedule and ordinal calibration, on the same decoded and preprocessed images), then explain the
test split at each target stride with every fast CAM method and score each map against the masks
as drray's explanation rows are scored (`drray.scores.map_scores.map_scores`, inside the field of
view of each photograph's decode geometry):

- hit: pointing game (the map's peak within drray's tolerance, 2% of the image side, of a lesion
  pixel), over all lesion images, correctly graded ones, grade 1 (microaneurysms only) and >= 2;
- lift: mean share of map energy inside lesions over the mean share of the field they cover
  (a uniform map scores 1); med: the median over images of each image's own ratio;
- chance: the mean exact chance hit rate (drray.scores.localisation.chance_hit_rate), what a
  peak dropped at random inside the field of view scores;
- ideal: the lift, pooled as `lift` is, of the ideal map at the target's (finest) grid: the
  lesion masks themselves drawn on it, every lesion in proportion and nothing else
  (drray.scores.localisation.ideal_energy_share). A CAM is its layer's grid upsampled, so at
  stride 8 a 3-px microaneurysm is at best a cell-sized blob: `lift` over `ideal` is how much of
  what the resolution allows the maps reach;
- random: the hit rate of the same method on copies with every block re-initialised
  (drray.cam.sanity), averaged over --draws seeds, an empty map (no peak) scoring its image's
  chance rate as in randomisation.parquet's `expected_hit`, with rho the mean Spearman correlation
  of their maps with the trained ones;
- cost: time of the CAM call over the forward-only call, same batch, measured interleaved.

Besides each stride alone, each pair of neighbouring strides is scored fused ("8+16": both layers'
maps from the same pass, multiplied into their geometric mean on the finer grid;
drray.cam.maps.fuse_on_finest_grid).

    python benchmarks/cam_validity.py --out /tmp/cam_validity          # ~1000 images, 4 families
    python benchmarks/cam_validity.py --smoke-test                     # tiny sizes, a minute or two

Trained models are kept under OUT/models/<family> and reused by a later run with --reuse, so the
scoring can be rerun without training again. Results also go to OUT/cam_validity.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAMILIES = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"]


@dataclass
class Split:
    """Decoded images of one split: uint8 (N, S, S, 3) and grades; for the scored split, each image's decode
    geometry (crop box, field of view) and lesion bits, as drray scores maps with them."""

    images: np.ndarray
    labels: np.ndarray
    geometries: list = field(default_factory=list)
    masks: list = field(default_factory=list)

    def has_lesions(self) -> np.ndarray:
        from drray.data.mask_bits import unpack_mask
        from drray.schema import LESION_TYPES

        return np.array([unpack_mask(m, LESION_TYPES).any() for m in self.masks], dtype=bool)


# ------------------------------------------------------------------------------------------ data
def build_data(out: Path, args) -> Path:
    """Synthetic set -> manifest (in this process: no Ray needed for a few hundred images)."""
    from drray.config import SynthConfig
    from drray.data.ingest import ingest
    from drray.data.synth import generate

    root = out / "synth"
    if not (root / "labels.csv").is_file():
        generate(SynthConfig(n=args.n, size=args.synth_size, seed=args.seed), root, parallel=False)
    result = ingest("synth", root, out / "data", seed=args.seed, split_fractions=(0.6, 0.15, 0.25), parallel=False)
    return result.manifest_path


def decode_split(manifest: Path, split: str, prep, scored: bool) -> Split:
    """Every readable row of `split`, preprocessed exactly as training and `drray explain` do.

    scored: also decode the lesion masks (the split the maps are scored on).
    """
    import cv2

    from drray.data.dataset import load_manifest, manifest_base_dir
    from drray.data.decode import decode_record
    from drray.schema import MASK_COLUMNS, MASK_TYPES
    from drray.storage import resolve_path

    cv2.setNumThreads(1)
    rows = load_manifest(str(manifest), split)
    base = manifest_base_dir(str(manifest))
    decoded, labels = [], []
    for _, row in rows.iterrows():
        masks = {t: resolve_path(row[c], base) if isinstance(row[c], str) and row[c] else None
                 for t, c in zip(MASK_TYPES, MASK_COLUMNS)} if scored else None
        d = decode_record(resolve_path(row["path"], base), prep, masks)
        if not d.error_reason:
            decoded.append(d)
            labels.append(int(row["label"]))
    return Split(np.stack([d.image for d in decoded]), np.asarray(labels),
                 [d.geometry for d in decoded] if scored else [], [d.masks for d in decoded] if scored else [])


# -------------------------------------------------------------------------------------- training
def train_family(name: str, train: Split, val: Split, prep, args, epochs: int):
    """A drray model trained with `drray train`'s training step (normalisation, augmentation, loss), schedule and
    ordinal calibration; the epoch of the best val QWK."""
    import torch

    from drray.inference import forward_outputs
    from drray.models.model import create_model, fit_ordinal_temperature, fit_ordinal_thresholds
    from drray.scores.grading import quadratic_weighted_kappa
    from drray.training.loop import lr_factor, train_step
    from drray.training.train import class_weights

    torch.manual_seed(args.seed)
    model = create_model(name, head=args.head, image_size=prep.image_size, preprocess=prep)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    weights = torch.tensor(class_weights(train.labels), dtype=torch.float32)
    generator = torch.Generator().manual_seed(args.seed)
    images, labels = torch.from_numpy(train.images), torch.from_numpy(train.labels.astype(np.int64))
    per_epoch = max(1, len(labels) // args.batch)
    total, warmup = per_epoch * epochs, per_epoch  # one warm-up epoch, as the demo recipe
    best, step, start = (-math.inf, None, None, 0), 0, time.perf_counter()
    cpu = torch.device("cpu")
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for b in range(per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            train_step(model, optimizer, images[idx], labels[idx], lr=args.lr * lr_factor(step, warmup, total),
                       class_weights=weights, generator=generator)
            step += 1
        model.eval()
        outputs = torch.cat([forward_outputs(model, val.images[i:i + 32], cpu) for i in range(0, len(val.images), 32)])
        if model.head == "ordinal":
            t = fit_ordinal_thresholds(outputs[:, 0].numpy(), val.labels)
            model.set_ordinal_calibration(t, fit_ordinal_temperature(outputs[:, 0].numpy(), val.labels, t))
        qwk = quadratic_weighted_kappa(val.labels, model.predict(outputs).numpy())
        print(f"    {name} epoch {epoch + 1}: val QWK {qwk:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
        if qwk > best[0]:
            best = (qwk, copy.deepcopy(model.state_dict()), copy.deepcopy(model.card), epoch + 1)
    model.load_state_dict(best[1])
    model.card = best[2]
    print(f"  trained {name}: {epochs} epochs in {time.perf_counter() - start:.0f} s, "
          f"best val QWK {best[0]:.3f} at epoch {best[3]}", flush=True)
    return model.eval()


def trained_model(name: str, out: Path, data: dict[str, Split], prep, args, epochs: int):
    from drray.models.model import load_model, save_model

    model_dir = out / "models" / name
    if args.reuse and (model_dir / "model.json").is_file():
        print(f"  reusing {model_dir}", flush=True)
        return load_model(model_dir)
    model = train_family(name, data["train"], data["val"], prep, args, epochs)
    save_model(model, model_dir)
    return model


# --------------------------------------------------------------------------------------- scoring
def median_cost(model, engine, x, rounds: int) -> float:
    """Median over interleaved rounds of (CAM call time) / (forward-only time) on the same batch."""
    import torch

    def forward():
        with torch.inference_mode():
            model(x)

    forward(), engine(x)  # warm-up: first calls allocate
    ratios = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        forward()
        t1 = time.perf_counter()
        engine(x)
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(ratios)


def score_family(name: str, model, test: Split, args) -> list[dict]:
    """One row per (stride, method): the figures of the module docstring."""
    import torch

    from drray.cam import CamEngine, randomised_copy
    from drray.cam.sanity import cascade_blocks
    from drray.cam.target_layers import fused_name, stride_layers
    from drray.explain.randomisation import expected_hit
    from drray.scores.grading import quadratic_weighted_kappa
    from drray.scores.localisation import rank_correlation
    from drray.scores.map_scores import map_scores

    # One random network is one fixed function: its peaks land wherever its weights favour, so its hit
    # rate swings from seed to seed; the mean over several draws estimates what random weights score.
    rands = [randomised_copy(model, len(cascade_blocks(model)), seed=args.seed + d) for d in range(args.draws)]
    available = stride_layers(model.backbone, model.card.input_size)
    strides = [s for s in args.strides if s in available] or list(available)[-1:]  # a transformer: its one grid
    # Each stride alone, then each neighbouring pair fused (their maps multiplied: drray.cam.maps.fuse_maps).
    targets = [dict(target_stride=s) for s in strides]
    if args.fuse:
        targets += [dict(target_layer=fused_name([available[a][0], available[b][0]]))
                    for a, b in zip(strides, strides[1:])]
    has = test.has_lesions()
    size = test.images.shape[1]
    fields = [g.field_mask(size) for g in test.geometries]
    rows = []
    for target in targets:
        engine = CamEngine(model, method=args.methods[0], **target)
        r_engines = [CamEngine(r, method=args.methods[0], **target) for r in rands]

        def score(cam, k: int):
            # As drray's explanation rows are scored: inside the fundus of the photograph's decode geometry.
            return map_scores(cam.numpy(), test.geometries[k], test.masks[k], cam_size=args.cam_size,
                              tolerance=args.tolerance, grid_stride=engine.target_stride)

        keys = ("hit", "rhit", "energy", "rho", "chance", "area", "ideal")
        stats = {m: {k: [] for k in keys} for m in args.methods}
        preds = []
        for i in range(0, len(test.images), args.batch):
            x = model.normalize(torch.from_numpy(test.images[i:i + args.batch]))
            out = engine(x, methods=args.methods)
            r_outs = [e(x, methods=args.methods) for e in r_engines]
            preds.append(out["preds"].numpy())
            for j in range(len(x)):
                k = i + j
                if not has[k]:
                    continue
                for m in args.methods:
                    trained = score(out["cams_by_method"][m][j], k)
                    randoms = [score(r["cams_by_method"][m][j], k) for r in r_outs]
                    c, st = trained.columns, stats[m]
                    st["hit"].append(c["pointing_hit"])
                    # A random copy's empty map scores the image's chance rate, as in randomisation.parquet.
                    st["rhit"].append(np.mean([expected_hit(r.columns["pointing_hit"], r.columns["chance_hit"],
                                                            not (r.cam > 0).any()) for r in randoms]))
                    for key, column in (("energy", "energy_in_lesions"), ("chance", "chance_hit"),
                                        ("area", "lesion_area"), ("ideal", "ideal_energy")):
                        st[key].append(c[column])
                    # Inside the field (the zeros outside would agree), every 4th pixel: the maps are
                    # bilinear upsamplings, the ranks barely change.
                    inside = fields[k][::4, ::4] if fields[k] is not None else slice(None)
                    # An empty random map has no ranks (NaN): left out, as randomisation.parquet stores null.
                    st["rho"].append(_mean(np.array([rank_correlation(trained.cam[::4, ::4][inside],
                                                                      r.cam[::4, ::4][inside]) for r in randoms])))
        preds = np.concatenate(preds)
        labels = test.labels[has]
        correct = preds[has] == labels
        if target is targets[0]:
            print(f"{name}: test QWK {quadratic_weighted_kappa(test.labels, preds):.3f}, accuracy "
                  f"{(preds == test.labels).mean():.3f}; {int(has.sum())} lesion images, {int(correct.sum())} "
                  f"graded correctly, {int((labels == 1).sum())} of grade 1", flush=True)
            print(HEADER, flush=True)
        for m in args.methods:
            st = {k: np.asarray(v, dtype=np.float64) for k, v in stats[m].items()}
            cost_engine = CamEngine(model, method=m, **target)
            x = model.normalize(torch.from_numpy(test.images[:args.batch]))
            rows.append({
                "family": name, "stride": "+".join(map(str, _strides_of(engine, available))),
                "layer": engine.target_layer_name, "method": m,
                "n": int(has.sum()), "n_correct": int(correct.sum()), "n_grade1": int((labels == 1).sum()),
                "hit": _mean(st["hit"]), "hit_correct": _mean(st["hit"][correct]),
                "hit_grade1": _mean(st["hit"][labels == 1]), "hit_grade2plus": _mean(st["hit"][labels >= 2]),
                "lift": _mean(st["energy"]) / _mean(st["area"]),
                "lift_median": _median(st["energy"] / st["area"]),
                "chance": _mean(st["chance"]),
                "ideal": _mean(st["ideal"]) / _mean(st["area"]),
                "ideal_median": _median(st["ideal"] / st["area"]),
                "random_hit": _mean(st["rhit"]), "random_rho": _mean(st["rho"]),
                "cost": median_cost(model, cost_engine, x, args.timing_rounds),
                "test_accuracy": float((preds == test.labels).mean()),
                "test_qwk": quadratic_weighted_kappa(test.labels, preds),
            })
            print(_row(rows[-1]), flush=True)
    return rows


def _strides_of(engine, available: dict) -> list:
    """The strides of the engine's target layers (two for a fused target)."""
    by_name = {f"backbone.{n}": s for s, (n, _) in available.items()}
    return [by_name.get(n, engine.target_stride) for n in engine.target_layer_name.split("+")]


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def _mean(x: np.ndarray) -> float:
    """Mean of the finite values; NaN, without numpy's warning, when there are none (e.g. no grade-1 image)."""
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


HEADER = (f"{'family':18s} {'stride':>6s} {'method':18s} {'hit':>5s} {'correct':>7s} {'grade1':>6s} {'>=2':>5s} "
          f"{'lift':>5s} {'med':>5s} {'ideal':>5s} {'chance':>6s} {'random':>6s} {'rho':>5s} {'cost':>5s}")


def _row(r: dict) -> str:
    return (f"{r['family']:18s} {r['stride']:>6} {r['method']:18s} {r['hit']:5.2f} {r['hit_correct']:7.2f} "
            f"{r['hit_grade1']:6.2f} {r['hit_grade2plus']:5.2f} {r['lift']:5.1f} {r['lift_median']:5.1f} "
            f"{r['ideal']:5.1f} "
            f"{r['chance']:6.2f} "
            f"{r['random_hit']:6.2f} {r['random_rho']:5.2f} {r['cost']:4.2f}x")


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--families", nargs="+", default=FAMILIES)
    parser.add_argument("--n", type=int, default=1000, help="synthetic images (60/15/25%% train/val/test)")
    parser.add_argument("--synth-size", type=int, default=256, help="side of the rendered photographs")
    parser.add_argument("--image-size", type=int, default=192, help="network input side")
    parser.add_argument("--no-ben-graham", dest="ben_graham", action="store_false")
    parser.add_argument("--head", default="ordinal", choices=["ordinal", "classification"])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the first family (the demo's 20)")
    parser.add_argument("--other-epochs", type=int, default=None, help="epochs of the other families "
                        "(default --epochs; fewer keeps the run short on a small machine)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every fast method of CAM_METHODS")
    parser.add_argument("--tolerance", type=float, default=None, help="pointing tolerance, share of the side "
                        "(default drray's CamConfig.pointing_tolerance)")
    parser.add_argument("--no-fuse", dest="fuse", action="store_false",
                        help="skip the fused targets (each pair of neighbouring strides, maps multiplied)")
    parser.add_argument("--draws", type=int, default=5, help="random re-initialisations averaged for 'random'")
    parser.add_argument("--timing-rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="load models trained by an earlier run in OUT")
    parser.add_argument("--smoke-test", action="store_true",
                        help="40 images at 64 px, 1 epoch, gradcam and eigencam, 1 timing round")
    args = parser.parse_args()
    if args.smoke_test:
        args.n, args.synth_size, args.image_size, args.epochs, args.batch, args.timing_rounds = 40, 96, 64, 1, 8, 1
        args.draws = 2
        args.methods = args.methods or ["gradcam", "eigencam"]  # one gradient method, one without

    import torch

    from drray.cam import CAM_METHODS
    from drray.config import CamConfig, PreprocessConfig

    torch.set_num_threads(args.threads)
    args.methods = args.methods or [n for n, m in CAM_METHODS.items() if m.fast]
    args.tolerance = CamConfig().pointing_tolerance if args.tolerance is None else args.tolerance
    args.cam_size = CamConfig().cam_size
    tmp = tempfile.TemporaryDirectory(prefix="drray_cam_validity_") if args.out is None else None
    out = Path(tmp.name) if tmp is not None else args.out
    out.mkdir(parents=True, exist_ok=True)
    prep = PreprocessConfig(image_size=args.image_size, crop=True, ben_graham=args.ben_graham)
    start = time.perf_counter()
    manifest = build_data(out, args)
    data = {s: decode_split(manifest, s, prep, scored=s == "test") for s in ("train", "val", "test")}
    test = data["test"]
    n_les = int(test.has_lesions().sum())
    print(f"CAM validity: {args.n} synthetic images at {args.synth_size} px -> {args.image_size} px "
          f"(Ben Graham {'on' if args.ben_graham else 'off'}), {args.head} head, {args.epochs} epochs"
          f"{'' if args.other_epochs is None else f' ({args.other_epochs} after the first family)'}; "
          f"test split {len(test.labels)} images, {n_les} with lesions; tolerance {args.tolerance:.0%} of the side "
          f"({args.tolerance * args.image_size:.2f} px); {args.threads} torch threads; data in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for i, name in enumerate(args.families):
        epochs = args.epochs if i == 0 or args.other_epochs is None else args.other_epochs
        model = trained_model(name, out, data, prep, args, epochs)
        rows += score_family(name, model, test, args)
    (out / "cam_validity.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "rows": rows}, indent=1))
    print(f"hit: pointing game over lesion images (correct: correctly graded; grade1; >=2); lift: energy in lesions "
          f"/ their area share (med: median of per-image ratios); ideal: lift of the lesion masks drawn on the "
          f"target's grid, a perfect map at that stride; chance: random peak in the field; "
          f"random: all blocks re-initialised (rho: Spearman "
          f"with the trained maps); cost: CAM time / forward-only time. {time.perf_counter() - start:.0f} s in all; "
          f"results in {out / 'cam_validity.json'}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
