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
