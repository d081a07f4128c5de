"""The one predictor: batches and single photographs, the same numbers as the model, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from drray.config import CamConfig, PreprocessConfig
from drray.inference import Predictor, explain_image, forward_outputs, read_outputs
from drray.models.model import create_model, read_model_files, save_model

pytestmark = pytest.mark.timeout(60)
SIZE = 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("test_resnet", head="ordinal", image_size=SIZE,
                         preprocess=PreprocessConfig(image_size=SIZE, ben_graham=True))
    return save_model(model.eval(), tmp_path_factory.mktemp("predictor") / "model")


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    import skimage.data

    return skimage.data.retina()


def _batch(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_predict_is_the_models_own_reading_of_its_outputs(model_dir):
    p = Predictor.from_model_dir(model_dir, methods=())
    images = _batch()
    got = p.predict(images)
    outputs = forward_outputs(p.model, images, p.device)
    probs, preds = read_outputs(p.model, outputs)
    np.testing.assert_allclose(got.probs, probs, atol=1e-6)
    np.testing.assert_array_equal(got.preds, preds)
    np.testing.assert_allclose(got.probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got.referable_prob, probs[:, 2:].sum(axis=1), atol=1e-6)
    with torch.no_grad():  # and that is what the network says for the normalised images
        raw = p.model(p.model.normalize(torch.from_numpy(images)))
    np.testing.assert_allclose(got.outputs, raw.numpy(), atol=1e-5)


def test_explain_gives_one_map_per_method_on_the_input_grid(model_dir):
    p = Predictor.from_model_dir(model_dir, methods=["gradcam", "gradcam++"])
    out = p.explain(_batch(2))
    assert set(out.maps) == {"gradcam", "gradcam++"}
    for maps in out.maps.values():
        assert maps.shape == (2, SIZE, SIZE) and maps.min() >= 0 and maps.max() <= 1
    assert out.targets.shape == (2,)
    np.testing.assert_array_equal(out.preds, p.predict(_batch(2)).preds)
    only = p.explain(_batch(2), methods=["xgradcam"])
    assert list(only.maps) == ["xgradcam"]


def test_predictor_loads_from_bytes_without_the_model_dir(model_dir, tmp_path):
    """Actors on other nodes get the model dir's bytes through the object store, not its path."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    files = read_model_files(copy)
    shutil.rmtree(copy)
    p = Predictor.from_model_dir(files, methods=["gradcam"])
    assert p.model_id == Predictor.from_model_dir(model_dir).model_id


@pytest.mark.parametrize("kind", ["array", "path", "bytes"])
def test_explain_image_end_to_end_on_a_real_photograph(model_dir, retina, tmp_path, kind):
    path = tmp_path / "retina.png"
    Image.fromarray(retina).save(path)
    source = {"array": retina, "path": str(path), "bytes": path.read_bytes()}[kind]
    r = explain_image(source, model_dir, method="gradcam")
    assert r["grade"] in range(5) and len(r["probs"]) == 5 and abs(sum(r["probs"]) - 1) < 1e-5
    assert r["quality_ok"] and r["warnings"] == []
    assert r["cam"].shape == (SIZE, SIZE)
    assert 0 <= r["peak_y"] <= 1 and 0 <= r["peak_x"] <= 1
    overlay = np.asarray(Image.open(io.BytesIO(r["overlay_png"])))
    assert overlay.shape[2] == 3 and overlay.shape[0] == overlay.shape[1] >= 128
    # Drawn on the colour photograph (red fundus), not on the grey Ben Graham network input.
    mean = overlay.reshape(-1, 3).mean(axis=0)
    assert mean[0] > mean[2]
    assert set(r["timings_ms"]) >= {"preprocess_ms", "model_ms", "render_ms", "total_ms"}


def test_a_photograph_without_a_fundus_still_gets_an_answer_with_a_warning(model_dir):
    flat = np.full((300, 400, 3), 128, np.uint8)
    r = Predictor.from_model_dir(model_dir).explain_image(flat)
    assert r["quality_ok"] is False and r["warnings"] and "field of view" in r["warnings"][0]
    assert r["grade"] in range(5)


def test_ben_graham_can_be_switched_per_call(model_dir, retina):
    p = Predictor.from_model_dir(model_dir)
    on, off = p.explain_image(retina), p.explain_image(retina, ben_graham=False)
    assert on["probs"] != off["probs"]


def test_bad_inputs_are_clear_errors(model_dir):
    from drray.data.images import ImageError

    p = Predictor.from_model_dir(model_dir)
    with pytest.raises(ImageError) as e:
        p.explain_image(b"certainly not an image")
    assert e.value.reason == "not_an_image"
    with pytest.raises(TypeError, match="path, encoded bytes"):
        p.explain_image(42)
    with pytest.raises(ValueError, match="unknown CAM method"):
        p.explain_image(np.zeros((64, 64, 3), np.uint8), method="nope")
    with pytest.raises(ValueError, match="unknown CAM target"):
        p.explain(_batch(1), target="most likely")
    with pytest.raises(ValueError, match="repeat"):
        Predictor.from_model_dir(model_dir, methods=["gradcam", "GradCAM"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Predictor.from_model_dir(model_dir.parent / "nowhere")


def test_faithfulness_scores_come_with_the_maps(model_dir):
    p = Predictor(Predictor.from_model_dir(model_dir).model, methods=["gradcam"], cam=CamConfig(faithfulness=True))
    out = p.explain(_batch(2))
    scores = out.faithfulness["gradcam"]
    assert set(scores) == {"road_score", "deletion_auc", "insertion_auc"}
    for name in ("deletion_auc", "insertion_auc"):
        assert scores[name].shape == (2,) and np.all((scores[name] >= 0) & (scores[name] <= 1))


def test_describe_names_what_the_model_is(model_dir):
    d = Predictor.from_model_dir(model_dir).describe()
    assert d["backbone"] == "test_resnet" and d["head"] == "ordinal" and d["input_size"] == SIZE
    assert d["target_layer"].startswith("backbone.") and d["grades"]["4"] == "proliferative DR"


def test_explain_image_in_steps_batches_photographs_to_the_same_answers(model_dir, retina):
    """prepare_photo -> explain (a stacked batch) -> explanation_of: what the server batches, same numbers."""
    p = Predictor.from_model_dir(model_dir, methods=["gradcam"])
    flat = np.full((300, 400, 3), 128, np.uint8)
    items = [p.prepare_photo(retina), p.prepare_photo(flat)]
    out = p.explain(np.stack([it.prepared.image for it in items]), methods=["gradcam"], target="pred")
    for i, (item, image) in enumerate(zip(items, [retina, flat])):
        batched = p.explanation_of(item, out, i, "gradcam", "pred", keep_background=True)
        alone = p.explain_image(image, method="gradcam", target="pred")
        np.testing.assert_allclose(batched["probs"], alone["probs"], atol=1e-5)
        np.testing.assert_allclose(batched["cam"], alone["cam"], atol=1e-5)
        assert batched["quality_ok"] == alone["quality_ok"] and batched["warnings"] == alone["warnings"]
        assert batched["background"].shape == batched["overlay"].shape
    assert p.method_name(None) == "gradcam" and p.method_name("GradCAM++") == "gradcam++"


def test_score_maps_is_the_one_scoring_step(model_dir, retina):
    """Clip to the field of view, peak, entropy, lesion scores and the overlay, per map of a batch."""
    from drray.data.geometry import Geometry
    from drray.data.mask_bits import mask_bits
    from drray.scores.map_scores import map_scores

    p = Predictor.from_model_dir(model_dir, methods=["gradcam"], cam=CamConfig(overlay_size=40))
    item = p.prepare_photo(retina)
    geometry = item.geometry
    field = geometry.field_mask(SIZE)
    assert field is not None and 0.5 < field.mean() < 0.9
    maps = np.random.default_rng(0).random((2, SIZE, SIZE)).astype(np.float32)
    lesion = np.zeros((SIZE, SIZE), bool)
    lesion[30:34, 30:34] = True
    bits = [mask_bits({"he": lesion}, (SIZE, SIZE)), None]
    background = item.prepared.image
    scored = p.score_maps(maps, [geometry, geometry], bits, [background, background])
    for k, s in enumerate(scored):
        assert s.cam[~field].max() == 0 and s.cam.max() == pytest.approx(1.0)  # clipped to the fundus
        alone = map_scores(maps[k], geometry, bits[k], cam_size=p.cam.cam_size, tolerance=p.cam.pointing_tolerance)
        assert {c: v for c, v in s.columns.items() if c != "overlay_png"} == alone.columns
        assert s.overlay.shape == (40, 40, 3) and s.columns["overlay_png"][:4] == b"\x89PNG"
    assert scored[0].columns["chance_hit"] > 0 and scored[1].columns["chance_hit"] is None
    # Without a field (no fundus found) the map is scored as it is; without backgrounds no overlay is drawn.
    bare = p.score_maps(maps[:1], [Geometry(0, 0, SIZE, SIZE, SIZE)])[0]
    assert np.array_equal(bare.cam, maps[0]) and bare.overlay is None and "overlay_png" not in bare.columns
    with pytest.raises(ValueError, match="2 maps need one geometry"):
        p.score_maps(maps, [geometry])
