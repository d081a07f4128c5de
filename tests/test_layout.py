"""The package is laid out as the README says, its floors hold, its imports form no cycle, and it leans on no
private Ray API."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).parents[1] / "drray"
README = Path(__file__).parents[1] / "README.md"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(*parts: str) -> list[Path]:
    out = []
    for part in parts:
        p = PKG / part
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def test_readme_layout_names_every_subpackage_and_top_level_module():
    text = README.read_text()
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    subpackages = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()
                         and p.name != "recipes")
    modules = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    for name in subpackages:
        assert re.search(rf"^\s+{name}/", layout, re.M), f"README Layout lacks drray/{name}/"
    for name in modules:
        assert name in layout, f"README Layout lacks drray/{name}"


ABOVE = {
    "data": ("drray.scores", "drray.models", "drray.inference", "drray.evaluate", "drray.explain", "drray.serve",
             "drray.training"),
    "scores": ("drray.models", "drray.inference", "drray.evaluate", "drray.explain", "drray.serve", "drray.training"),
    "models": ("drray.inference", "drray.evaluate", "drray.explain", "drray.serve", "drray.training"),
    "evaluate": ("drray.inference", "drray.explain", "drray.serve", "drray.training"),
}
"""What each low floor must not import: data < scores < models < the predictor; evaluation reads tables only."""


@pytest.mark.parametrize("floor", sorted(ABOVE))
def test_data_scores_models_and_evaluation_import_nothing_above_them(floor):
    for f in _files(floor):
        bad = [m for m in _imports(f) if m.startswith(ABOVE[floor])]
        assert not bad, f"{f.relative_to(PKG)} imports {bad}"


def _unit_graph() -> dict[str, dict[str, list[str]]]:
    """drray's subpackages and top-level modules, and which others each imports (with the files that do)."""
    units = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()} | {p.stem for p in PKG.glob("*.py")}
    graph: dict[str, dict[str, list[str]]] = {u: {} for u in units}
    for f in _files("."):
        rel = f.relative_to(PKG)
        src = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"drray.{a.name}" for a in node.names] if node.module == "drray" else [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] != "drray":
                    continue
                dst = parts[1] if len(parts) > 1 and parts[1] in units else "__init__"
                if dst != src:
                    graph[src].setdefault(dst, []).append(str(rel))
    return graph


def test_the_import_graph_has_no_cycle():
    """Every import runs down the floors: no subpackage or module imports one that imports it back, by any path."""
    graph = _unit_graph()
    done: set[str] = set()

    def visit(unit: str, path: list[str]) -> None:
        if unit in path:
            loop = path[path.index(unit):] + [unit]
            steps = [f"{a} -> {b} ({', '.join(sorted(set(graph[a][b])))})" for a, b in zip(loop, loop[1:])]
            pytest.fail("import cycle: " + "; ".join(steps))
        if unit in done:
            return
        for dst in sorted(graph.get(unit, {})):
            visit(dst, path + [unit])
        done.add(unit)

    for unit in sorted(graph):
        visit(unit, [])
    # The floors the issue tracker fixed: scores sit below models and the predictor, evaluation above neither.
    assert "scores" in graph["models"] and "scores" in graph["inference"]
    assert "inference" not in graph["evaluate"] and "evaluate" not in graph["inference"]


@pytest.mark.parametrize("part", ["explain", "evaluate", "serve", "inference.py", "cam"])
def test_explaining_evaluating_and_serving_need_no_training_code(part):
    if not (PKG / part).exists():
        pytest.skip(f"drray/{part} does not exist yet")
    for f in _files(part):
        bad = [m for m in _imports(f) if m.startswith("drray.training")]
        assert not bad, f"{f.relative_to(PKG)} imports {bad}"


def test_no_private_ray_api():
    """`ray._private`, `ray._raylet` and `*._internal` change without notice between Ray releases."""
    for f in _files("."):
        text = f.read_text()
        bad = [m for m in _imports(f) if m.startswith("ray.") and any(p.startswith("_") for p in m.split(".")[1:])]
        bad += re.findall(r"ray(?:\.\w+)*\._internal[\w.]*", text)
        assert not bad, f"{f.relative_to(PKG)} uses {bad}"


NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make"}
"""Underscored, but namedtuple's documented methods."""


def _private_names_of_drray_and_its_uses() -> tuple[set[str], list[tuple[str, int, str]]]:
    own, uses = set(), []
    for f in _files("."):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, ast.arg):
                own.add(node.arg)
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                uses.append((str(f.relative_to(PKG)), node.lineno, f"{ast.unparse(node.value)}.{node.attr}"))
    return own, uses


def test_no_private_attribute_of_a_ray_object():
    """`handle._get_max_batch_size()` and the like are Ray's internals: an attribute with a leading underscore that
    drray does not define itself, and that Ray's own source defines, is refused wherever drray reaches for it."""
    import ray

    own, uses = _private_names_of_drray_and_its_uses()
    foreign = {name.rsplit(".", 1)[1] for _, _, name in uses} - own - NAMEDTUPLE_API
    ray_root = Path(ray.__file__).parent
    ray_private = set()
    for f in ray_root.rglob("*.py"):  # methods Ray defines, and attributes it sets on its objects
        for found in re.findall(r"def (_[A-Za-z]\w*)|\.(_[A-Za-z]\w*) *=[^=]", f.read_text(errors="ignore")):
            ray_private.update(n for n in found if n)
    bad = [f"{f}:{line} {name}" for f, line, name in uses if name.rsplit(".", 1)[1] in foreign & ray_private]
    assert not bad, f"private Ray attributes: {bad}"
    assert "_get_max_batch_size" in ray_private  # the check sees Ray's source (what drray once called)


def test_no_module_passes_400_lines_by_much():
    long = {str(f.relative_to(PKG)): n for f in _files(".") if (n := len(f.read_text().splitlines())) > 450}
    assert not long, f"split these modules: {long}"
