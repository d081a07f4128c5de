"""metrics.json -> metrics.parquet: every figure as one row of `schema.METRICS_SCHEMA` (long form).

    select metric, error_bucket, n, value, ci_low, ci_high, baseline
    from metrics where family = 'error_bucket' and cam_method = 'gradcam'

Families and their metrics (cam_method is null for grading):
    grading        n, qwk, accuracy, macro_f1, referable_auc, sensitivity, specificity, ece,
                   images (per true grade), confusion (grade x pred_grade counts)
    localisation   pointing_hit_rate, energy_in_lesions, energy_lift, energy_lift_median, ideal_lift,
                   ideal_lift_median (all images, or per true grade), od_energy
    lesion_type    pointing_hit_rate, energy_share (images holding that lesion type)
    error_bucket   images, pointing_hit_rate, energy_in_lesions, energy_lift per exact / off_by_one / gross
    concentration  cam_entropy, peak_share (all, or per true grade)
    randomisation  pointing_hit_rate, energy_in_lesions, rank_corr per cascade step
    observation    observation_a, _b, _c: the key figure, what it is compared with, and `status`
    review         graders' verdicts (drray.evaluate.reviews), per CAM method, all or per error bucket:
                   reviewed_hit_rate ("on" among on + off, Wilson), reviewed_cant_tell (count); all maps only:
                   reviewer_agreement (beside chance_agreement), reviewer_kappa (Cohen's for two reviewers,
                   Fleiss' for more: metrics.json's reviews entry says which)
"""

from __future__ import annotations

from typing import Any, Iterator

import pyarrow as pa

from drray.schema import LESION_TYPES, METRICS_SCHEMA

_BASE = {name: None for name in METRICS_SCHEMA.names}


def _row(**kw: Any) -> dict[str, Any]:
    return {**_BASE, **kw}


def _grading(key: dict[str, Any], g: dict[str, Any]) -> Iterator[dict[str, Any]]:
    fam = dict(family="grading", **key)
    yield _row(**fam, metric="n", value=float(g["n"]), n=g["n"])
    yield _row(**fam, metric="qwk", value=g.get("qwk"), ci_low=g.get("qwk_ci_low"), ci_high=g.get("qwk_ci_high"),
               ci_method="bootstrap", n=g["n"])
    for name, n_key in (("accuracy", "n"), ("sensitivity", "n_referable"), ("specificity", "n_non_referable")):
        yield _row(**fam, metric=name, value=g.get(name), ci_low=g.get(f"{name}_ci_low"),
                   ci_high=g.get(f"{name}_ci_high"), ci_method="wilson", n=g.get(n_key))
    yield _row(**fam, metric="macro_f1", value=g.get("macro_f1"), n=g["n"])
    yield _row(**fam, metric="referable_auc", value=g.get("referable_auc"), ci_low=g.get("referable_auc_ci_low"),
               ci_high=g.get("referable_auc_ci_high"), ci_method="bootstrap", n=g["n"])
    yield _row(**fam, metric="ece", value=g.get("ece"), n=g["n"])
    for grade, count in enumerate(g["label_counts"]):
        yield _row(**fam, metric="images", grade=grade, value=float(count), n=count)
    for i, line in enumerate(g["confusion_matrix"]):
        for j, count in enumerate(line):
            yield _row(**fam, metric="confusion", grade=i, pred_grade=j, value=float(count), n=count)


def _localisation(fam: dict[str, Any], s: dict[str, Any], **where: Any) -> Iterator[dict[str, Any]]:
    yield _row(**fam, **where, metric="pointing_hit_rate", value=s["hit_rate"], ci_low=s["hit_rate_ci_low"],
               ci_high=s["hit_rate_ci_high"], ci_method="wilson", n=s["n"], baseline=s["chance_hit"],
               baseline_metric="chance_hit")
    yield _row(**fam, **where, metric="energy_in_lesions", value=s["energy_in_lesions"],
               ci_low=s["energy_in_lesions_ci_low"], ci_high=s["energy_in_lesions_ci_high"], ci_method="normal",
               n=s["energy_in_lesions_n"], baseline=s["lesion_area"], baseline_metric="lesion_area")
    yield _row(**fam, **where, metric="energy_lift", value=s["energy_lift"], ci_low=s["energy_lift_ci_low"],
               ci_high=s["energy_lift_ci_high"], ci_method="bootstrap", n=s["energy_in_lesions_n"], baseline=1.0,
               baseline_metric="uniform map")
    if s.get("energy_lift_median") is not None:
        yield _row(**fam, **where, metric="energy_lift_median", value=s["energy_lift_median"],
                   n=s["energy_in_lesions_n"], baseline=1.0, baseline_metric="uniform map")
    # The lift of the masks drawn on the map's grid: what that resolution allows (drray.scores.localisation).
    for name in ("ideal_lift", "ideal_lift_median"):
        if s.get(name) is not None:
            yield _row(**fam, **where, metric=name, value=s[name], n=s["energy_in_lesions_n"], baseline=1.0,
                       baseline_metric="uniform map")


def _mean(fam: dict[str, Any], s: dict[str, Any], name: str, metric: str | None = None,
          **where: Any) -> dict[str, Any]:
    return _row(**fam, **where, metric=metric or name, value=s[name], ci_low=s[f"{name}_ci_low"],
                ci_high=s[f"{name}_ci_high"], ci_method="normal", n=s[f"{name}_n"])


def _method(key: dict[str, Any], method: str, e: dict[str, Any]) -> Iterator[dict[str, Any]]:
    k = dict(key, cam_method=method)
    loc = dict(family="localisation", **k)
    yield from _localisation(loc, e["localisation"]["all"])
    for g, s in e["localisation"]["by_grade"].items():
        yield from _localisation(loc, s, grade=int(g))
    yield _mean(loc, e["optic_disc"], "od_energy")
    les = dict(family="lesion_type", **k)
    for t in LESION_TYPES:
        s = e["localisation"]["by_lesion"][t]
        yield _row(**les, lesion_type=t, metric="pointing_hit_rate", value=s["hit_rate"], ci_low=s["hit_rate_ci_low"],
                   ci_high=s["hit_rate_ci_high"], ci_method="wilson", n=s["n"], baseline=s["chance_hit"],
                   baseline_metric="chance_hit")
        yield _mean(les, s, "energy", "energy_share", lesion_type=t)
    obs = e["observations"]
    bucket = dict(family="error_bucket", **k)
    for b, s in obs["buckets"].items():
        yield _row(**bucket, error_bucket=b, metric="images", value=float(s["images"]), n=s["images"])
        yield from _localisation(bucket, s, error_bucket=b)
    conc = dict(family="concentration", **k)
    for g, s in [("all", e["concentration"]["all"]), *e["concentration"]["by_grade"].items()]:
        where = {} if g == "all" else {"grade": int(g)}
        yield _mean(conc, s, "cam_entropy", **where)
        yield _mean(conc, s, "peak_share", **where)
    rand = e.get("randomisation")
    if rand:
        r = dict(family="randomisation", **k)
        for s in rand["cascades"]:
            yield _row(**r, cascade=s["cascade"], metric="pointing_hit_rate", value=s["hit_rate"],
                       ci_low=s["hit_rate_ci_low"], ci_high=s["hit_rate_ci_high"], ci_method="wilson", n=s["n"],
                       baseline=s["chance_hit"], baseline_metric="chance_hit")
            if s.get("expected_hit_rate") is not None:
                yield _row(**r, cascade=s["cascade"], metric="expected_hit_rate", value=s["expected_hit_rate"],
                           n=s["n"], baseline=s["chance_hit"], baseline_metric="chance_hit")
                yield _row(**r, cascade=s["cascade"], metric="empty_maps", value=float(s["empty_maps"]), n=s["n"])
            yield _mean(r, s, "energy_in_lesions", cascade=s["cascade"])
            yield _mean(r, s, "rank_corr", cascade=s["cascade"])
    for v in obs["verdicts"]:
        yield _row(family="observation", **k, metric=f"observation_{v['key']}", value=v["value"], ci_low=v["ci_low"],
                   ci_high=v["ci_high"], ci_method=None if v["ci_low"] is None else ("normal" if v["key"] == "c"
                                                                                     else "wilson"),
                   n=v["n"], baseline=v["baseline"], baseline_metric=v["baseline_metric"] or None, status=v["status"])


def _reviews(r: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    for grp in (r or {}).get("groups", []):
        fam = dict(family="review", **{k: grp[k] for k in ("dataset", "split", "model_id", "cam_method")})
        for b, s in [(None, grp["all"]), *grp["buckets"].items()]:
            yield _row(**fam, error_bucket=b, metric="reviewed_hit_rate", value=s["hit_rate"],
                       ci_low=s["hit_rate_ci_low"], ci_high=s["hit_rate_ci_high"], ci_method="wilson", n=s["n"])
            yield _row(**fam, error_bucket=b, metric="reviewed_cant_tell", value=float(s["cant_tell"]),
                       n=s["on"] + s["off"] + s["cant_tell"])
        a = grp["agreement"]
        if a:
            yield _row(**fam, metric="reviewer_agreement", value=a["agreement"], n=a["maps"],
                       baseline=a["chance_agreement"], baseline_metric="chance_agreement")
            yield _row(**fam, metric="reviewer_kappa", value=a["kappa"], n=a["maps"])


def metrics_table(metrics: dict[str, Any]) -> pa.Table:
    """Every figure of an `evaluate` result as a METRICS_SCHEMA table."""
    rows: list[dict[str, Any]] = []
    for grp in metrics["groups"]:
        key = {"dataset": grp["dataset"], "split": grp["split"], "model_id": grp["model_id"]}
        rows += _grading(key, grp["grading"])
        for method, e in grp["methods"].items():
            rows += _method(key, method, e)
    rows += _reviews(metrics.get("reviews"))
    cols = {name: [r[name] for r in rows] for name in METRICS_SCHEMA.names}
    return pa.Table.from_pydict(cols, schema=METRICS_SCHEMA)
