"""`drray report`: one self-contained HTML page a clinician can read, built from a run's tables.

    path = report("runs/demo")          # writes runs/demo/report.html

Headline grading figures with intervals, the confusion matrix, ROC and calibration plots, the
Tune trials, the three observations measured (`observations`), localisation beside chance,
the randomisation check where the run has one, what the model looks at where `drray audit` has run
(drray.evaluate.strategy_section), and galleries chosen by rule (`gallery`). Every
image and plot is inline (base64 data URIs) and the page loads nothing at view time: it can be
mailed, archived or opened offline. The HTML comes from the jinja2 template shipped in
drray/evaluate/templates.
"""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import os
from typing import Any

import numpy as np
import pandas as pd

from drray import storage
from drray.evaluate import gallery as gal
from drray.evaluate import plots
from drray.evaluate.observations import BUCKET_NAMES
from drray.rundir import RunDir
from drray.schema import GRADE_NAMES, GRADES, LESION_TYPES, NUM_GRADES

log = logging.getLogger(__name__)

TEMPLATE = "report.html.j2"
LESION_NAMES = {"ma": "microaneurysms", "he": "haemorrhages", "ex": "hard exudates", "se": "soft exudates",
                "nv": "neovascularisation", "od": "optic disc"}
TRIAL_COLUMNS = ("trial_id", "backbone", "head", "lr", "image_size", "batch_size", "best_val_qwk", "best_epoch",
                 "epochs_run", "val_accuracy", "val_referable_auc", "score_method", "status", "seconds", "error")


def data_uri(data: bytes | None, mime: str) -> str | None:
    return None if not data else f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _png(data: bytes | None) -> str | None:
    return data_uri(data, "image/png")


def _pct(x: Any) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * float(x):.0f}%"


def _num(x: Any, digits: int = 3) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{float(x):.{digits}f}"


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("drray.evaluate", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env


def _confusion(cm: list[list[int]]) -> list[dict[str, Any]]:
    out = []
    for line in cm:
        total = int(sum(line))
        out.append({"total": total, "cells": [{"count": int(c), "share": (c / total) if total else 0.0} for c in line]})
    return out


def _trials(run: RunDir) -> dict[str, Any] | None:
    from drray.evaluate.query import open_table

    ds = open_table(run.trials, partitioned=False)
    if ds is None:
        return None
    df = ds.to_table().to_pandas()
    if df.empty:
        return None
    if "best_val_qwk" in df:
        df = df.sort_values("best_val_qwk", ascending=False, na_position="last", kind="mergesort")
    cols = [c for c in TRIAL_COLUMNS if c in df.columns and df[c].notna().any()]
    score_method = None
    if "score_method" in cols and df["score_method"].nunique(dropna=False) == 1:
        score_method = str(df["score_method"].iloc[0])  # one method for all: said once, above the table
        cols.remove("score_method")

    def show(v: Any) -> str:
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    rows = [[show(v) for v in r] for r in df[cols].itertuples(index=False)]
    png = None
    if "best_val_qwk" in df and df["best_val_qwk"].notna().any():
        ok = df[df["best_val_qwk"].notna()]
        labels = [f"{r.get('backbone', '')} {r.get('head', '')} {r.get('trial_id', '')}".strip()
                  for r in ok.to_dict("records")]
        png = _png(plots.trials_png(ok["best_val_qwk"].astype(float).tolist(), labels))
    return {"columns": cols, "rows": rows, "png": png, "score_method": score_method}


def _manifest(run: RunDir) -> pd.DataFrame | None:
    from drray.evaluate.query import open_table

    ds = open_table(run.manifest, partitioned=False)
    return None if ds is None else ds.to_table().to_pandas().set_index("image_id", drop=False)


def _preprocess(run: RunDir):
    from drray.config import PreprocessConfig

    try:
        from drray.models.card import read_card

        card = read_card(run.model)
        return card, card.preprocess_config()
    except (FileNotFoundError, ValueError) as e:
        log.warning("report: no usable model card in %s (%s); photographs cropped with default preprocessing",
                    run.model, e)
        return None, PreprocessConfig()


def _cards(rows: pd.DataFrame, method: str, run: RunDir, manifest: pd.DataFrame | None, cfg) -> list[dict[str, Any]]:
    from drray.evaluate.photos import fundus_views
    from drray.evaluate.tables import read_overlays

    overlays = read_overlays(run.explanations, method, rows["image_id"].tolist())
    cards = []
    for _, r in rows.iterrows():
        c = gal.caption(r)
        c["method"] = method
        c["overlay"] = _png(overlays.get(c["image_id"]))
        c["photo"] = c["lesions"] = None
        if manifest is not None and c["image_id"] in manifest.index:
            v = fundus_views(manifest.loc[c["image_id"]].to_dict(), run.root, cfg, (r.get("peak_y"), r.get("peak_x")))
            if v is not None:
                c["photo"] = data_uri(v.photo_jpeg, "image/jpeg")
                c["lesions"] = data_uri(v.lesions_jpeg, "image/jpeg")
        cards.append(c)
    return cards


def _method_context(name: str, e: dict[str, Any], min_n: int) -> dict[str, Any]:
    obs = e["observations"]
    buckets = [{"key": k, "name": BUCKET_NAMES[k], **s} for k, s in obs["buckets"].items()]
    conc = [{"label": f"{g} {GRADE_NAMES[g]}", **obs["concentration"][str(g)]} for g in GRADES]
    conc.append({"label": "grades 1-4", **obs["concentration"]["lesion_grades"]})
    loc = [{"label": f"{g} {GRADE_NAMES[g]}", **e["localisation"]["by_grade"][str(g)]} for g in GRADES]
    loc.append({"label": "all", **e["localisation"]["all"]})
    return {
        "name": name,
        "verdicts": obs["verdicts"],
        "buckets": buckets,
        "concentration": conc,
        "loc_rows": loc,
        "by_lesion": [{"type": t, "name": LESION_NAMES[t], **e["localisation"]["by_lesion"][t]} for t in LESION_TYPES],
        "optic_disc": e["optic_disc"],
        "randomisation": e.get("randomisation"),
        "buckets_png": _png(plots.buckets_png(obs["buckets"], BUCKET_NAMES, min_n)),
        "concentration_png": _png(plots.concentration_png(obs["concentration"], min_n)),
    }


def build_context(run_dir: str | os.PathLike, metrics: dict[str, Any], rows: pd.DataFrame, *,
                  gallery_size: int = 8, typical_per_grade: int = 3) -> dict[str, Any]:
    """Everything the template shows (see report.html.j2), from the metrics and the explanation rows."""
    from drray.evaluate.grading_report import one_row_per_image, reliability, roc_points
    from drray.evaluate.tables import KEYS
    from drray.models.card import drray_version

    run = RunDir(run_dir)
    min_n = int(metrics["min_n"])
    several = len({g["model_id"] for g in metrics["groups"]}) > 1
    groups = []
    for grp in metrics["groups"]:
        sel = np.ones(len(rows), dtype=bool)
        for k in KEYS:
            sel &= (rows[k] == grp[k]).to_numpy() if grp[k] is not None else rows[k].isna().to_numpy()
        images = one_row_per_image(rows[sel])
        g = grp["grading"]
        fpr, tpr = roc_points(images)
        label = f"{grp['dataset']}/{grp['split']}" + (f" · {grp['model_id']}" if several else "")
        groups.append({
            "label": label, "g": g, "key": grp, "rows": rows[sel],
            "confusion": _confusion(g["confusion_matrix"]),
            "roc_png": _png(plots.roc_png(fpr, tpr, g["referable_auc"], g["sensitivity"], g["specificity"],
                                          g["referable_threshold"])) if g["n"] else None,
            "calibration_png": _png(plots.calibration_png(reliability(images), g["ece"])) if g["n"] else None,
            "methods": [_method_context(m, e, min_n) for m, e in grp["methods"].items()],
            "primary_method": grp["primary_method"],
        })
    head = max(groups, key=lambda x: x["g"]["n"])
    method = head["primary_method"]
    card, cfg = _preprocess(run)
    manifest = _manifest(run)
    galleries, typical = [], {"title": gal.TYPICAL.title, "rule": gal.TYPICAL.rule, "grades": []}
    if method is not None:
        mrows = head["rows"][head["rows"]["cam_method"] == method]
        for spec in gal.GALLERIES:
            picked = gal.select(mrows, spec.key, gallery_size)
            available = len(gal.select(mrows, spec.key, len(mrows)))
            galleries.append({"title": spec.title, "rule": spec.rule, "available": available,
                              "cards": _cards(picked, method, run, manifest, cfg)})
        for grade, picked in gal.select_typical(mrows, typical_per_grade).items():
            ent = mrows.loc[mrows["label"] == grade, "cam_entropy"]
            typical["grades"].append({"grade": grade, "name": GRADE_NAMES[grade], "n": int(ent.notna().sum()),
                                      "median": float(ent.median()),
                                      "cards": _cards(picked, method, run, manifest, cfg)})
    from drray.evaluate.strategy_section import strategies_context

    strategies = strategies_context(run.root, manifest, cfg)
    for sec in strategies["sections"] if strategies else []:
        for row in sec["rows"]:
            row["centroid_uri"] = _png(row.pop("centroid_png"))
            for m in row["members"]:
                m["overlay"] = _png(m.pop("overlay_png"))
    hm = metrics["groups"][groups.index(head)]
    loc = hm["methods"][method]["localisation"]["all"] if method else None
    return {
        "title": "drray report: diabetic-retinopathy grading and its maps",
        "run": run.root,
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "version": drray_version(),
        "model": None if card is None else {"timm_name": card.timm_name, "head": card.head,
                                            "input_size": card.input_size},
        "min_n": min_n,
        "threshold": metrics["groups"][0]["grading"]["referable_threshold"],
        "observation_lines": metrics["observations"],
        "head": {"label": head["label"], "g": head["g"], "method": method, "loc": loc},
        "groups": groups,
        "grade_names": GRADE_NAMES[:NUM_GRADES],
        "trials": _trials(run),
        "galleries": galleries,
        "typical": typical,
        "strategies": strategies,
        "gallery_where": f"{method} maps of {head['label']}" if method else "No CAM method in this run",
        "legend": [(t, LESION_NAMES[t], "rgb({}, {}, {})".format(*_colour(t))) for t in (*LESION_TYPES, "od")],
    }


def _colour(t: str) -> tuple[int, int, int]:
    from drray.evaluate.photos import LESION_COLOURS

    return LESION_COLOURS[t]


def render(context: dict[str, Any]) -> str:
    """The report's HTML from `build_context`'s dict."""
    return _environment().get_template(TEMPLATE).render(**context)


def report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, metrics: dict[str, Any] | None = None,
           gallery_size: int = 8, typical_per_grade: int = 3, n_boot: int = 1000, seed: int = 0) -> str:
    """Write OUT/report.html (OUT defaults to the run directory) and return its location.

    metrics: `evaluate_run`'s result, to show those exact figures; None recomputes them from the
    tables with the same seed (the same numbers metrics.json holds for an unchanged run).
    """
    from drray.evaluate.evaluate import compute_metrics
    from drray.evaluate.tables import read_explanations, read_randomisation

    run = RunDir(run_dir)
    rows = read_explanations(run.explanations)
    if metrics is None:
        rand = read_randomisation(run.randomisation)
        metrics = storage.json_ready(compute_metrics(rows, rand, n_boot=n_boot, seed=seed))
    html = render(build_context(run, metrics, rows, gallery_size=gallery_size, typical_per_grade=typical_per_grade))
    target = RunDir(out if out is not None else run.root).report
    storage.write_text(target, html)
    return target
