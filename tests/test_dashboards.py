"""dashboards/*.json: valid Grafana JSON whose every PromQL expression queries metrics that exist.

A metric exists when drray's code records it (a ray.util.metrics Counter, Histogram or Gauge, exported
with Ray's `ray_` prefix; counters with `_total`, histograms as `_bucket/_sum/_count`) or when Ray's
installed source defines it (its name as a string literal, or the exported name in Ray's own dashboards).
"""

from __future__ import annotations

import ast
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).parents[1]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RAY_PARTS = ("serve", "data", "dashboard", "_private", "util", "train")

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "le",
}


def drray_metrics() -> set[str]:
    """Exported names of every metric drray's code records with ray.util.metrics."""
    names: set[str] = set()
    for path in (ROOT / "drray").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and n.module == "ray.util.metrics" for a in n.names}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))):
                continue
            kind = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if kind not in ("Counter", "Histogram", "Gauge") or (isinstance(node.func, ast.Name) and kind not in imported):
                continue
            arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                continue
            base = f"ray_{arg.value}"
            names |= {base, f"{base}_total"} if kind == "Counter" else set()
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if kind == "Histogram" else set()
            names |= {base} if kind == "Gauge" else set()
    return names


@lru_cache(maxsize=1)
def _ray_source() -> tuple[str, str]:
    """(all of Ray's Python source in RAY_PARTS, the source of Ray's generated Grafana dashboards)."""
    import ray

    base = Path(ray.__file__).parent
    code = []
    for part in RAY_PARTS:
        for f in (base / part).rglob("*.py"):
            if "/tests/" not in str(f):
                code.append(f.read_text(errors="ignore"))
    panels = "\n".join(f.read_text() for f in (base / "dashboard" / "modules" / "metrics" / "dashboards").glob("*.py"))
    return "\n".join(code), panels


def in_ray(metric: str) -> bool:
    code, panels = _ray_source()
    if re.search(rf"\b{re.escape(metric)}\b", panels):
        return True
    base = re.sub(r"_(total|bucket|sum|count)$", "", metric.removeprefix("ray_"))
    return f'"{base}"' in code or f"'{base}'" in code


def exprs(dashboard: dict) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets (rows included) and query variables."""
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
            out.append(m.group(1) if m else q)
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: not functions, label names, strings, durations or keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        tail = e[m.end():].lstrip()
        word = m.group(0)
        if tail.startswith("(") or word.lower() in PROMQL_WORDS or word.startswith("$"):
            continue
        if m.start() > 0 and e[m.start() - 1] in "$.0123456789":
            continue
        names.add(word)
    return names


def test_metric_names_parses_promql():
    q = 'histogram_quantile(0.95, sum(rate(ray_x_bucket{a="b(c)", route!~"/-/.*"}[5m])) by (le, route)) / on (x) ray_y'
    assert metric_names(q) == {"ray_x_bucket", "ray_y"}


def test_drray_metrics_are_those_the_explain_actors_record():
    assert {"ray_drray_images_explained_total", "ray_drray_explain_errors_total",
            "ray_drray_explain_batch_latency_s_bucket"} <= drray_metrics()


def test_there_is_a_dashboard():
    assert DASHBOARDS, "dashboards/ holds no Grafana JSON"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_queried_metric_exists(path):
    d = json.loads(path.read_text())
    assert d["title"] and d["panels"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    all_exprs = exprs(d)
    assert len(all_exprs) >= 10
    ours, unknown, seen = drray_metrics(), [], set()
    for e in all_exprs:
        for name in metric_names(e):
            seen.add(name)
            if name not in ours and not in_ray(name):
                unknown.append((name, e))
    assert not unknown, f"metrics neither drray nor Ray emits: {unknown}"
    assert {"ray_drray_images_explained_total", "ray_drray_explain_errors_total",
            "ray_drray_explain_batch_latency_s_bucket"} <= seen
    assert any(n.startswith("ray_serve_") for n in seen) and any(n.startswith("ray_data_") for n in seen)
    # Every panel queries through the dashboard's data source variable.
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))


def test_a_misspelt_metric_would_be_caught():
    assert not in_ray("ray_serve_num_http_requestz_total") and "ray_drray_images_explaind_total" not in drray_metrics()
    assert in_ray("ray_serve_num_http_requests_total") and in_ray("ray_data_output_rows")
