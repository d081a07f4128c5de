"""Evaluation: a run's tables -> metrics.json + metrics.parquet.

    metrics = evaluate_run("runs/demo")                  # writes runs/demo/metrics.json, metrics.parquet
    metrics = evaluate("runs/demo/explanations", "out")   # the same from an explanations folder

`evaluate` reads only tables: the explanations table (one row per image and CAM method) gives,
per dataset, split and model, the grading figures (`grading_report`), and per CAM method the
localisation figures beside their chance baselines (`explanation_metrics`), the three
observations drray began from (`observations`) and, where the run has randomisation.parquet,
the same scores with the model's weights destroyed. Every number is recomputable from the tables
with DuckDB (tests/test_evaluate.py does). Bootstrap intervals are seeded: same tables, same file.
Grading a model dir on a split without writing tables is `drray.explain.grade.grade_split`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from drray import storage
from drray.evaluate.observations import MIN_N
from drray.evaluate.tables import KEYS
from drray.rundir import RunDir
from drray.schema import REFERABLE_THRESHOLD

if TYPE_CHECKING:
    import pandas as pd


# ------------------------------------------------------------------------------ from the tables
def _primary_method(rows: "pd.DataFrame") -> str | None:
    """The method the headline and galleries use: the one with most rows (ties: first by name)."""
    counts = rows["cam_method"].dropna().value_counts()
    if counts.empty:
        return None
    top = counts[counts == counts.max()].index
    return sorted(top)[0]


def _group_label(dataset: Any, split: Any, model_id: Any, method: str, several_models: bool) -> str:
    where = f"{dataset}/{split}" + (f", {model_id}" if several_models else "")
    return f"{method} on {where}"


def compute_metrics(explanations: "pd.DataFrame", randomisation: "pd.DataFrame | None" = None, *,
                    n_boot: int = 1000, seed: int = 0, min_n: int = MIN_N,
                    threshold: float = REFERABLE_THRESHOLD) -> dict[str, Any]:
    """metrics.json's content from explanation rows (`tables.read_explanations`) and randomisation rows."""
    from drray.evaluate.explanation_metrics import explanation_metrics, randomisation_summary
    from drray.evaluate.grading_report import grading_metrics, one_row_per_image
    from drray.evaluate.observations import observations

    if explanations.empty:
        raise ValueError("the explanations table has no rows; run `drray explain` first")
    df = explanations
    several_models = df["model_id"].nunique(dropna=False) > 1
    groups, sentences = [], []
    keyed = df.assign(**{f"_{k}": df[k].fillna("") for k in KEYS})
    for (d, s, mid), rows in keyed.groupby([f"_{k}" for k in KEYS], sort=True):
        rows = rows.drop(columns=[f"_{k}" for k in KEYS])
        dataset, split, model_id = (rows[k].iloc[0] for k in KEYS)
        images = one_row_per_image(rows)
        method_rows = rows[rows["cam_method"].notna()]
        first = images["cam_method"].dropna()
        grp: dict[str, Any] = {
            "dataset": dataset, "split": split, "model_id": model_id,
            "grading_rows": "predict-only" if images["cam_method"].isna().any() or first.empty
            else f"cam_method={first.iloc[0]}",
            "grading": grading_metrics(images, threshold, n_boot, seed),
            "primary_method": _primary_method(rows),
            "methods": {},
        }
        for method in sorted(method_rows["cam_method"].unique()):
            mr = method_rows[method_rows["cam_method"] == method]
            e = explanation_metrics(mr, n_boot, seed)
            e["observations"] = observations(mr, n_boot, seed, min_n)
            rand = None
            if randomisation is not None and not randomisation.empty:
                sel = randomisation["cam_method"] == method
                for k, v in (("model_id", model_id), ("dataset", dataset), ("split", split)):
                    sel &= (randomisation[k] == v) | randomisation[k].isna()
                rand = randomisation_summary(randomisation[sel])
            e["randomisation"] = rand
            grp["methods"][method] = e
            label = _group_label(dataset, split, model_id, method, several_models)
            sentences += [f"{label}: {v['sentence']}" for v in e["observations"]["verdicts"]]
        groups.append(grp)
    head = max(groups, key=lambda g: g["grading"]["n"])  # the largest labelled group (first on ties)
    g = head["grading"]
    headline: dict[str, Any] = {k: head[k] for k in ("dataset", "split", "model_id")}
    headline.update({k: g[k] for k in ("n", "qwk", "qwk_ci_low", "qwk_ci_high", "accuracy", "macro_f1",
                                        "referable_auc", "referable_auc_ci_low", "referable_auc_ci_high",
                                        "sensitivity", "sensitivity_ci_low", "sensitivity_ci_high", "specificity",
                                        "specificity_ci_low", "specificity_ci_high", "ece", "referable_threshold")})
    method = head["primary_method"]
    headline["cam_method"] = method
    loc = head["methods"][method]["localisation"]["all"] if method else None
    for k in ("hit_rate", "hit_rate_ci_low", "hit_rate_ci_high", "chance_hit", "energy_lift"):
        headline[f"pointing_{k}" if k.startswith("hit") else k] = loc[k] if loc else None
    return {**headline, "n_boot": n_boot, "seed": seed, "min_n": min_n, "groups": groups,
            "observations": sentences}


def evaluate(explanations_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
             randomisation: str | os.PathLike | None = None, n_boot: int = 1000, seed: int = 0,
             min_n: int = MIN_N, reviews: str | os.PathLike | None = None) -> dict[str, Any]:
    """Metrics of an explanations table (folder, local or URI) into OUT/metrics.json and OUT/metrics.parquet.

    randomisation: a randomisation.parquet to report beside (None: none). reviews: a reviews/ folder of
    graders' verdicts (`drray.evaluate.reviews`; None: none). Returns metrics.json's content.
    """
    from drray.evaluate.metrics_table import metrics_table
    from drray.evaluate.reviews import evaluate_reviews
    from drray.evaluate.tables import read_explanations, read_randomisation

    rows = read_explanations(explanations_dir)
    rand = read_randomisation(randomisation) if randomisation is not None else None
    result = compute_metrics(rows, rand, n_boot=n_boot, seed=seed, min_n=min_n)
    result = {"explanations": str(explanations_dir),
              "randomisation": str(randomisation) if rand is not None else None, **result}
    result["reviews"] = evaluate_reviews(reviews, rows, min_n)
    out = RunDir(out_dir)
    storage.make_dirs(out.root)
    storage.write_parquet(out.metrics, metrics_table(result))
    storage.write_json(out.metrics_json, result)
    return storage.json_ready(result)


def evaluate_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, n_boot: int = 1000,
                 seed: int = 0, min_n: int = MIN_N) -> dict[str, Any]:
    """`evaluate` of a run's explanations (with randomisation.parquet, reviews/ where present) into OUT (default: run).

    Returns metrics.json's content: headline figures at the top (n, qwk, qwk_ci_low, qwk_ci_high,
    referable_auc, sensitivity, specificity, ece, pointing_hit_rate, chance_hit, ...), `groups`
    with every figure, and `observations`: one sentence per observation, CAM method and group.
    """
    run = RunDir(run_dir)
    rand = run.randomisation if storage.is_file(run.randomisation) else None
    return evaluate(run.explanations, out if out is not None else run.root, randomisation=rand, n_boot=n_boot,
                    seed=seed, min_n=min_n, reviews=run.reviews)


def headline(metrics: dict[str, Any]) -> str:
    """One line of a run's headline figures (what `drray evaluate` and `drray demo` print)."""
    def f(key: str) -> str:
        v = metrics.get(key)
        return "n/a" if v is None else f"{v:.3f}"

    text = (f"QWK {f('qwk')} (95% CI {f('qwk_ci_low')}-{f('qwk_ci_high')}) on {metrics.get('n', 0)} images; "
            f"referable AUC {f('referable_auc')}, sensitivity {f('sensitivity')}, specificity {f('specificity')}")
    if metrics.get("pointing_hit_rate") is not None:
        text += (f"; {metrics.get('cam_method')} peak on a lesion {f('pointing_hit_rate')} "
                 f"(chance {f('chance_hit')})")
    if metrics.get("energy_lift") is not None:
        text += f", energy in lesions {metrics['energy_lift']:.1f}x their area"
    return text
