"""The package is laid out as the README says, its floors hold, and it leans on no private Ray API."""

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


@pytest.mark.parametrize("floor", ["data", "models", "evaluate/metrics.py", "evaluate/localisation.py"])
def test_data_models_and_metrics_import_no_training_explanation_or_serving(floor):
    for f in _files(floor):
        bad = [m for m in _imports(f) if m.startswith(("drray.training", "drray.explain", "drray.serve",
                                                       "drray.inference"))]
        assert not bad, f"{f.relative_to(PKG)} imports {bad}"


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


def test_no_module_passes_400_lines_by_much():
    long = {str(f.relative_to(PKG)): n for f in _files(".") if (n := len(f.read_text().splitlines())) > 450}
    assert not long, f"split these modules: {long}"
