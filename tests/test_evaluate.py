"""Evaluating a model dir on a split: the Predictor over Ray Data, with ingest's pixel limit."""

from __future__ import annotations

import pytest
import torch

from drray.config import PreprocessConfig, SynthConfig
from drray.models.model import create_model, save_model

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from drray.data.ingest import ingest
    from drray.data.synth import generate

    root = tmp_path_factory.mktemp("evaluate")
    generate(SynthConfig(n=24, size=96, seed=5), root / "synth", parallel=False)
    ingest("synth", root / "synth", root, split_fractions=(0.5, 0.0, 0.5))
    torch.manual_seed(0)
    save_model(create_model("test_resnet", image_size=48, preprocess=PreprocessConfig(image_size=48)), root / "model")
    return root


def test_evaluate_model_grades_the_split_with_the_predictor(ray_session, run):
    from drray.data.ingest import read_manifest
    from drray.evaluate.evaluate import evaluate_model

    m = evaluate_model(run / "model", run / "manifest.parquet", split="test", n_boot=50)
    manifest = read_manifest(run / "manifest.parquet")
    assert m["n"] == int((manifest["split"] == "test").sum()) and m["skipped_unreadable"] == 0
    assert sum(m["label_counts"]) == sum(m["pred_counts"]) == m["n"]


def test_evaluate_model_uses_the_pixel_limit_it_is_given(ray_session, run):
    """Images admitted under a raised data.max_image_pixels are graded, not counted as unreadable."""
    from drray.evaluate.evaluate import evaluate_model

    # Below every image's size, every image is refused; at their size, every one is graded.
    with pytest.raises(ValueError, match="no readable labelled image"):
        evaluate_model(run / "model", run / "manifest.parquet", split="test", max_pixels=96 * 96 - 1, n_boot=10)
    m = evaluate_model(run / "model", run / "manifest.parquet", split="test", max_pixels=96 * 96, n_boot=10)
    assert m["n"] > 0 and m["skipped_unreadable"] == 0


# ------------------------------------------------------------------ a run built from synthetic rows
# Other test files (test_observations, test_report, test_readme_queries) import these builders.
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from drray.schema import (  # noqa: E402
    ERRORS_SCHEMA, EXPLAIN_ERRORS_SCHEMA, EXPLANATIONS_SCHEMA, LESION_TYPES, RANDOMISATION_SCHEMA, TRIALS_SCHEMA,
)

HIT_P = {0: 0.85, 1: 0.75, 2: 0.1}
"""P(peak on a lesion) by |pred - label| (capped at 2) in the synthetic rows: (a) and (b) hold by design."""


def _map(rng, grade: int, size: int = 8) -> np.ndarray:
    """Grade 0: a nearly flat map (diffuse); lesion grades: one blob (concentrated)."""
    if grade == 0:
        m = 0.6 + 0.05 * rng.random((size, size))
    else:
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.uniform(1, size - 2, 2)
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2 ** 2)) + 0.02 * rng.random((size, size))
    return np.clip(m / m.max(), 0, 1).astype(np.float16)


def synthetic_explanations(n: int = 150, methods=("gradcam", "gradcam++"), seed: int = 0, *,
                           dataset: str = "synth", split: str = "test", model_id: str = "tiny-model",
                           image_ids=None, labels=None, predict_only: bool = False, unlabelled: int = 3) -> pa.Table:
    """Rows in EXPLANATIONS_SCHEMA, one per image and method, as `drray explain` writes them."""
    from drray.cam.overlay import colorize, encode_png
    from drray.evaluate.localisation import entropy

    rng = np.random.default_rng(seed)
    ids = list(image_ids) if image_ids is not None else [f"{dataset}_{split}_{i:04d}" for i in range(n)]
    n = len(ids)
    if labels is None:
        labels = rng.choice(5, size=n, p=[0.35, 0.15, 0.2, 0.15, 0.15]).tolist()
        for i in range(min(unlabelled, n)):
            labels[n - 1 - i] = None
    rows = []
    for i, (iid, y) in enumerate(zip(ids, labels)):
        off = int(rng.choice(3, p=[0.55, 0.3, 0.15]))
        base = 2 if y is None else int(y)
        pred = base + off if base + off <= 4 else base - off
        if y is not None and off == 2 and rng.random() < 0.3:
            pred = 0 if base >= 2 else 4  # some grossest errors: 4 called 0
        probs = rng.dirichlet(np.full(5, 0.7)) * 0.4
        probs[pred] += 0.6
        probs = (probs / probs.sum()).astype(np.float32)
        shared = dict(image_id=iid, dataset=dataset, split=split, label=y, model_id=model_id, pred=pred,
                      probs=probs.tolist(), referable_prob=float(probs[2:].sum()), quality_ok=(i != 1),
                      target_class=None)
        lesion = y is not None and y >= 1 or (y is None and i % 2 == 0)
        present = [t for t in LESION_TYPES if rng.random() < 0.6] or ["ma"]
        if predict_only:
            rows.append({**shared, "cam_method": None})
        for mi, method in enumerate(methods):
            r = np.random.default_rng([seed, i, mi])
            cam = _map(r, 0 if not lesion else 2)
            row = {**shared, "cam_method": method, "cam": cam.tobytes(), "cam_h": 8, "cam_w": 8,
                   "peak_y": float(r.random()), "peak_x": float(r.random()),
                   "cam_entropy": entropy(cam.astype(np.float32)), "od_energy": float(r.uniform(0, 0.1)),
                   "cam_layer": "backbone.layer2", "overlay_png": encode_png(colorize(cam.astype(np.float32)))}
            if lesion:
                err = min(2, abs(pred - base))
                hit = bool(r.random() < HIT_P[err])
                area = float(r.uniform(0.01, 0.05))
                energy = area * (3.0 if hit else 1.2) * float(r.uniform(0.8, 1.2))
                row.update(pointing_hit=hit, chance_hit=float(r.uniform(0.05, 0.2)), lesion_area=area,
                           energy_in_lesions=energy,
                           **{f"energy_{t}": energy / len(present) for t in present})
            rows.append(row)
    cols = {f.name: [r.get(f.name) for r in rows] for f in EXPLANATIONS_SCHEMA}
    return pa.Table.from_pydict(cols, schema=EXPLANATIONS_SCHEMA)


def write_explanations(run: Path, table: pa.Table, part: str = "part-0") -> None:
    """Hive-partitioned by dataset and split, as the sink writes them (the partition columns not in the files)."""
    for d in sorted(set(table["dataset"].to_pylist())):
        for s in sorted(set(table["split"].to_pylist())):
            sub = table.filter(pa.compute.and_(pa.compute.equal(table["dataset"], d), pa.compute.equal(table["split"], s)))
            if sub.num_rows:
                folder = run / "explanations" / f"dataset={d}" / f"split={s}"
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(sub.drop_columns(["dataset", "split"]), folder / f"{part}.parquet")


def synthetic_randomisation(expl: pa.Table, method: str = "gradcam", n: int = 30, steps: int = 3) -> pa.Table:
    """The randomisation check on the first n lesion images: cascade 0 = the trained rows, then chance-level peaks."""
    rows = [r for r in expl.to_pylist() if r["cam_method"] == method and r["pointing_hit"] is not None][:n]
    out = []
    for r in rows:
        rng = np.random.default_rng(abs(hash(r["image_id"])) % 2**32)
        for c in range(steps + 1):
            out.append(dict(image_id=r["image_id"], dataset=r["dataset"], split=r["split"], label=r["label"],
                            model_id=r["model_id"], cam_method=method, cascade=c,
                            reinitialised=",".join(["head", "layer4", "layer3"][:c]),
                            rank_corr=1.0 if c == 0 else float(rng.uniform(-0.1, 0.4) / c),
                            pointing_hit=r["pointing_hit"] if c == 0 else bool(rng.random() < r["chance_hit"]),
                            chance_hit=r["chance_hit"],
                            energy_in_lesions=r["energy_in_lesions"] if c == 0 else r["lesion_area"]))
    return pa.Table.from_pylist(out, schema=RANDOMISATION_SCHEMA)


def write_side_tables(run: Path, expl: pa.Table) -> None:
    """randomisation.parquet, trials.parquet and both error tables beside the explanations."""
    pq.write_table(synthetic_randomisation(expl), run / "randomisation.parquet")
    trials = [dict(trial_id="t0", backbone="test_resnet", head="ordinal", lr=3e-3, image_size=48, batch_size=8,
                   best_val_qwk=0.61, epochs_run=4, status="TERMINATED", best_epoch=3, score_method="val qwk"),
              dict(trial_id="t1", backbone="test_efficientnet", head="ordinal", lr=3e-3, image_size=48, batch_size=8,
                   best_val_qwk=0.42, epochs_run=2, status="TERMINATED", best_epoch=2, score_method="val qwk")]
    pq.write_table(pa.Table.from_pylist(trials, schema=TRIALS_SCHEMA), run / "trials.parquet")
    ingest = [dict(source="images/bad.jpg", stage="ingest", reason="corrupt_image", detail="cannot identify image"),
              dict(source="labels.csv:7", stage="ingest", reason="label_out_of_range", detail="label 7")]
    pq.write_table(pa.Table.from_pylist(ingest, schema=ERRORS_SCHEMA), run / "ingest_errors.parquet")
    (run / "explain_errors").mkdir(exist_ok=True)
    explain = [dict(source="images/x.jpg", stage="read", reason="missing_file", detail="gone", image_id="x",
                    dataset="synth", split="test", model_id="tiny-model", cam_method=None)]
    pq.write_table(pa.Table.from_pylist(explain, schema=EXPLAIN_ERRORS_SCHEMA), run / "explain_errors" / "part-0.parquet")


def write_run(run: Path, n: int = 150, seed: int = 0, **kw) -> Path:
    """A run directory of synthetic tables: explanations (two methods), randomisation, trials, errors."""
    run.mkdir(parents=True, exist_ok=True)
    expl = synthetic_explanations(n, seed=seed, **kw)
    write_explanations(run, expl)
    write_side_tables(run, expl)
    return run
