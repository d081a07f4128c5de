"""The README's Python API block, run as written, and the public names it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from drray.config import PreprocessConfig, SynthConfig

README = Path(__file__).parents[1] / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = README.read_text()
    start = text.index(heading)
    m = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert m, f"no python block under {heading!r}"
    return m.group(1)


@pytest.fixture(scope="module")
def demo_cwd(tmp_path_factory):
    """A working directory holding a small runs/demo: ingested synthetic photographs and a model dir."""
    from drray.data.ingest import ingest
    from drray.data.synth import generate
    from drray.models.model import create_model, save_model

    cwd = tmp_path_factory.mktemp("api")
    run = cwd / "runs" / "demo"
    generate(SynthConfig(n=12, size=96, seed=1), run / "synth", parallel=False)
    ingest("synth", run / "synth", run, split_fractions=(0.5, 0.0, 0.5))
    torch.manual_seed(0)
    model = create_model("test_resnet", head="ordinal", image_size=64,
                         preprocess=PreprocessConfig(image_size=64, ben_graham=True))
    save_model(model, run / "model")
    return cwd


@pytest.mark.timeout(300)
def test_the_readme_python_api_block_runs_as_written(demo_cwd):
    code = readme_block("## Python API")
    assert "import drray.explain" in code and "drray.explain_image" in code and "drray.explain(" in code
    check = code + "\nassert callable(drray.explain) and job.rows_written > 0\nprint('rows', len(table))\n"
    r = subprocess.run([sys.executable, "-c", check], cwd=demo_cwd, capture_output=True, text=True, timeout=280,
                       env={**__import__("os").environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    assert "rows" in r.stdout
    assert (demo_cwd / "runs" / "demo" / "explanations").is_dir()


def test_import_drray_is_light_and_names_the_api():
    code = ("import sys, drray; heavy = [m for m in ('torch', 'ray', 'timm', 'pyarrow', 'pandas') if m in sys.modules];"
            "print(heavy); print(sorted(drray.__all__))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    heavy, names = r.stdout.splitlines()
    assert heavy == "[]"
    for name in ("load_model", "create_model", "CamEngine", "explain", "explain_image", "query", "Predictor"):
        assert name in names


def test_drray_explain_stays_callable_after_any_submodule_import():
    code = ("import drray.explain.sink, drray.explain.pipeline, drray;"
            "import drray.explain;"
            "assert callable(drray.explain), type(drray.explain);"
            "from drray.explain import explain; assert callable(explain);"
            "print(drray.explain.pipeline.explain is not None)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"
