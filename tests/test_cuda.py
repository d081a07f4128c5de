"""The GPU paths, run where a CUDA device exists (benchmarks/gpu_check.sh); each has a CPU twin in the suite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drray.config import PreprocessConfig

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run benchmarks/gpu_check.sh there)"),
]


def _model(head: str = "classification"):
    from drray.models.model import create_model

    torch.manual_seed(0)
    return create_model("resnet18", head=head, image_size=128, preprocess=PreprocessConfig(image_size=128)).eval()


def test_cam_engine_on_cuda_in_bf16_matches_float32_on_the_cpu():
    from drray.cam import CamEngine

    model = _model()
    x = torch.rand(4, 3, 128, 128)
    with CamEngine(model, method="gradcam", device="cpu") as cpu:
        ref = cpu(x)
    with CamEngine(model, method="gradcam", device="cuda", autocast_dtype=torch.bfloat16) as gpu:
        got = gpu(x)
    np.testing.assert_array_equal(got["preds"].numpy(), ref["preds"].numpy())
    corr = np.corrcoef(got["cams"].numpy().ravel(), ref["cams"].numpy().ravel())[0, 1]
    assert corr > 0.95, f"bf16 maps on CUDA drift from float32 ones (correlation {corr:.3f})"


def test_predictor_on_cuda_gives_the_cpu_grades():
    from drray.inference import Predictor

    model = _model("ordinal")
    images = np.random.default_rng(0).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    cpu = Predictor(model, methods=["gradcam"], device="cpu").explain(images)
    gpu = Predictor(_model("ordinal"), methods=["gradcam"], device="cuda").explain(images)
    np.testing.assert_allclose(gpu.probs, cpu.probs, atol=1e-3)
    assert np.corrcoef(gpu.maps["gradcam"].ravel(), cpu.maps["gradcam"].ravel())[0, 1] > 0.99


def test_explain_actors_on_one_gpu(ray_session, tmp_path):
    from drray.config import CamConfig, ExplainConfig, SynthConfig
    from drray.data.ingest import ingest
    from drray.data.synth import generate
    from drray.explain.pipeline import explain
    from drray.models.model import save_model

    generate(SynthConfig(n=16, size=128, seed=0), tmp_path / "synth", parallel=False)
    ingest("synth", tmp_path / "synth", tmp_path)
    save_model(_model(), tmp_path / "model")
    job = ExplainConfig(gpus_per_actor=1, cpus_per_actor=0.5, batch_size=8)
    result = explain(tmp_path / "manifest.parquet", tmp_path / "model", tmp_path, cam=CamConfig(methods=["gradcam"]),
                     job=job)
    assert result.rows_written == 16 and result.errors == {}
