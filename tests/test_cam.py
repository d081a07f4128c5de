"""CamEngine: fast maps equal pytorch-grad-cam's, one forward gives probabilities and maps, nothing leaks.

Maps are compared at the batch's resolution, as pytorch-grad-cam returns them: it resizes each
low-resolution map with cv2.INTER_LINEAR, the engine with a batched bilinear F.interpolate
(half-pixel centres, the same formula), so the two agree to float rounding.
"""

from __future__ import annotations

import functools
import gc
import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn

from drray.cam import CAM_METHODS, CamEngine, frozen_eval, get_method
from drray.cam.target_layers import DEFAULT_TARGET_STRIDE, resolve_target_layer, stride_layers

pytestmark = pytest.mark.timeout(120)

SIZE = 96
FAMILIES = {
    "resnet": ("test_resnet", {}),
    "efficientnet": ("test_efficientnet", {}),
    "convnext": ("test_convnext", {}),
    "vit": ("test_vit", {"img_size": SIZE}),
}
GRADIENT_METHODS = [n for n, m in CAM_METHODS.items() if m.fast and n not in ("eigencam", "eigengradcam")]


@functools.lru_cache(maxsize=None)
def family_model(family: str) -> nn.Module:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs)
    with torch.no_grad():  # non-trivial weights everywhere, classifier included
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def images(n: int = 3, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def assert_close_maps(ours: torch.Tensor, ref: np.ndarray, label: str) -> None:
    assert ours.shape == ref.shape, label
    for i, (a, b) in enumerate(zip(ours.numpy(), ref)):
        assert a.std() > 1e-3 and b.std() > 1e-3, f"{label}: image {i} has a constant map, the test says nothing"
        assert pearson(a, b) >= 0.99, f"{label}: image {i} correlates {pearson(a, b):.3f}"


def hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_full_backward_hooks", None) or ()) for m in model.modules())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_fast_gradient_methods_match_pytorch_grad_cam(family, method):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = family_model(family)
    x = images()
    # pytorch-grad-cam's references use one layer: the default stride's alone, not the fused default.
    with CamEngine(model, method=method, target_layer=resolve_target_layer(model).layer) as engine:
        out = engine(x)
    targets = [ClassifierOutputTarget(int(g)) for g in out["preds"]]
    with getattr(pgc, CAM_METHODS[method].pgc_class)(model, [engine.target_layer], engine.reshape_transform) as cam:
        ref = cam(input_tensor=x, targets=targets)
    assert_close_maps(out["cams"], ref, f"{method} on {family}")


def pgc_eigen_reference(model, layer, reshape, x, targets, with_grads: bool) -> np.ndarray:
    """pytorch-grad-cam's capture, SVD projection and post-processing, with drray's EigenCAM sign rule.

    The library leaves the sign of the first component to its SVD routine; drray points it along
    the channel sum of the centred maps, so the reference applies that same rule and nothing else.
    """
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    capture = ActivationsAndGradients(model, [layer], reshape)
    try:
        outputs = capture(x)
        if with_grads:
            model.zero_grad()
            sum(t(o) for t, o in zip(targets, outputs)).backward()
        acts = capture.activations[0].numpy()
        maps = acts * capture.gradients[0].numpy() if with_grads else acts
    finally:
        capture.release()
        model.zero_grad(set_to_none=True)
    proj = get_2d_projection(maps)
    b, c = maps.shape[:2]
    centred = maps.reshape(b, c, -1) - maps.reshape(b, c, -1).mean(axis=2, keepdims=True)
    sign = np.sign((proj.reshape(b, -1) * centred.sum(axis=1)).sum(axis=1))
    proj = proj * np.where(sign == 0, 1, sign)[:, None, None]
    size = (x.shape[-1], x.shape[-2])
    return scale_cam_image(scale_cam_image(np.maximum(proj, 0), size))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_eigen_methods_match_pytorch_grad_cam_projection(family, method):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = family_model(family)
    x = images()
    # pytorch-grad-cam's references use one layer: the default stride's alone, not the fused default.
    with CamEngine(model, method=method, target_layer=resolve_target_layer(model).layer) as engine:
        out = engine(x)
    targets = [ClassifierOutputTarget(int(g)) for g in out["preds"]]
    ref = pgc_eigen_reference(model, engine.target_layer, engine.reshape_transform, x, targets,
                              with_grads=method == "eigengradcam")
    assert_close_maps(out["cams"], ref, f"{method} on {family}")


def test_outputs_shapes_and_ranges():
    model = family_model("resnet")
    x = images(4)
    with torch.inference_mode():
        reference = model(x)
    out = CamEngine(model)(x)
    assert out["logits"].shape == (4, 5) and out["probs"].shape == (4, 5)
    torch.testing.assert_close(out["logits"], reference)  # the map's forward is the prediction's forward
    torch.testing.assert_close(out["probs"].sum(dim=1), torch.ones(4))
    assert out["preds"].dtype == torch.long and torch.equal(out["preds"], reference.argmax(dim=1))
    assert torch.equal(out["targets"], out["preds"])
    cams = out["cams"]
    assert cams.shape == (4, SIZE, SIZE) and cams.dtype == torch.float32
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0 and float(cams.max()) > 0.99
    small = CamEngine(model)(x, output_size=(32, 24))["cams"]
    assert small.shape == (4, 32, 24)


def test_cpu_batches_run_channels_last_with_the_same_maps():
    model = family_model("resnet")
    x = images(2)
    seen = []
    handle = model.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        nchw = CamEngine(model)(x)
        nhwc = CamEngine(model)(x.contiguous(memory_format=torch.channels_last))
    finally:
        handle.remove()
    assert seen == [True, True]  # oneDNN's fast layout, whatever the caller's
    assert x.is_contiguous()  # the caller's tensor is left as it was
    torch.testing.assert_close(nchw["cams"], nhwc["cams"], atol=1e-4, rtol=0)
    torch.testing.assert_close(nchw["logits"], nhwc["logits"])


def test_several_methods_share_one_call():
    model = family_model("convnext")
    x = images(2)
    engine = CamEngine(model, method="gradcam")
    both = engine(x, methods=["layercam", "gradcam"])
    assert set(both["cams_by_method"]) == {"layercam", "gradcam"}
    assert torch.equal(both["cams"], both["cams_by_method"]["layercam"])
    torch.testing.assert_close(both["cams_by_method"]["gradcam"], engine(x)["cams"])


def test_hooks_released_after_with_and_after_errors():
    model = family_model("efficientnet")
    x = images(2)
    with CamEngine(model, method="gradcam++") as engine:
        engine(x)
    assert hooks_left(model) == 0
    with pytest.raises(RuntimeError, match="inside"):
        with CamEngine(model) as engine:
            engine(x)
            raise RuntimeError("inside the with block")
    assert hooks_left(model) == 0
    engine = CamEngine(model)
    with pytest.raises(ValueError, match="grade 7 is outside 0-4"):
        engine(x, target=7)  # fails after the hooked forward pass
    assert hooks_left(model) == 0


def test_model_flags_restored():
    model = family_model("resnet")
    frozen = {n for n, _ in list(model.named_parameters())[:5]}
    for n, p in model.named_parameters():
        p.requires_grad_(n not in frozen)
    model.train()
    model.bn1.eval()  # a model may keep parts in eval mode while training
    try:
        for method in ("gradcam", "scorecam"):
            CamEngine(model, method=method)(images(2, size=64))
            assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
            assert model.training and model.layer1.training and not model.bn1.training
            assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on deprecated torch.distributed aliases warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("method", ["gradcam", "ablationcam"])
def test_memory_stays_flat_over_many_calls(method):
    model = family_model("vit")
    x = images(2)
    engine = CamEngine(model, method=method)
    for _ in range(3):
        engine(x)
    before = live_tensors()
    for _ in range(30 if method == "gradcam" else 5):
        out = engine(x)
    del out
    assert live_tensors() <= before
    assert hooks_left(model) == 0


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_zoo_methods_run_through_the_engine(method):
    model = family_model("vit" if method == "ablationcam" else "resnet")  # transformer ablation included
    layer_before = dict(model.named_modules())
    out = CamEngine(model, method=method)(images(2), output_size=(48, 48))
    cams = out["cams"]
    assert cams.shape == (2, 48, 48) and torch.isfinite(cams).all()
    assert float(cams.min()) >= 0.0 and float(cams.max()) <= 1.0 and float(cams.max()) > 0.9
    torch.testing.assert_close(out["probs"].sum(dim=1), torch.ones(2))
    assert dict(model.named_modules()).keys() == layer_before.keys()  # the ablation layer was put back
    assert all(a is b for a, b in zip(dict(model.named_modules()).values(), layer_before.values()))
    assert hooks_left(model) == 0


def test_targets_change_the_maps_when_they_should():
    model = family_model("convnext")
    x = images(3)
    engine = CamEngine(model)
    pred = engine(x)
    other = [(int(g) + 2) % 5 for g in pred["preds"]]
    by_grade = engine(x, target=other)
    same_as_pred = engine(x, target=pred["preds"])
    referable = engine(x, target="referable")
    torch.testing.assert_close(same_as_pred["cams"], pred["cams"])
    assert by_grade["targets"].tolist() == other and referable["targets"].tolist() == [-1, -1, -1]
    for i in range(3):
        assert pearson(pred["cams"][i].numpy(), by_grade["cams"][i].numpy()) < 0.99
        assert pearson(pred["cams"][i].numpy(), referable["cams"][i].numpy()) < 0.99
    assert engine(x, target="2")["targets"].tolist() == [2, 2, 2]


def test_ordinal_and_classification_drray_models():
    from drray.models.model import create_model

    torch.manual_seed(0)
    ordinal = create_model("test_resnet", head="ordinal", image_size=64).eval()
    x = images(3, size=64)
    with CamEngine(ordinal) as engine:
        out = engine(x)
        table = stride_layers(ordinal.backbone)
        # The default: strides 8 and 16 fused (DEFAULT_FUSED_STRIDES), the finest giving the resolution.
        assert engine.target_layer_name == "+".join(f"backbone.{table[s][0]}" for s in (8, 16))
        assert engine.target_stride == DEFAULT_TARGET_STRIDE and len(engine.target_layers) == 2
        score = engine(x, target="score")
        grade = engine(x, target=1)
    assert out["logits"].shape == (3, 1) and out["targets"].tolist() == [-1, -1, -1]
    torch.testing.assert_close(out["probs"].sum(dim=1), torch.ones(3))
    assert torch.equal(out["preds"], ordinal.predict(out["logits"]))
    torch.testing.assert_close(out["cams"], score["cams"])  # an ordinal "pred" is its score
    assert grade["targets"].tolist() == [1, 1, 1] and torch.isfinite(grade["cams"]).all()
    zoo = CamEngine(ordinal, method="scorecam")(x)  # the library scores each perturbed copy by the same rule
    assert zoo["targets"].tolist() == [-1, -1, -1] and float(zoo["cams"].max()) > 0.9

    classifier = create_model("test_efficientnet", head="classification", image_size=64).eval()
    out = CamEngine(classifier, target="referable")(x)
    torch.testing.assert_close(out["probs"], classifier.grade_probs(out["logits"]))
    assert out["cams"].shape == (3, 64, 64)


def test_bf16_autocast_path_on_cpu():
    model = family_model("resnet")
    x = images(2)
    full = CamEngine(model)(x)
    half = CamEngine(model, autocast_dtype=torch.bfloat16)(x)
    assert half["cams"].dtype == torch.float32 and torch.isfinite(half["cams"]).all()
    assert half["probs"].dtype == torch.float32
    torch.testing.assert_close(half["probs"].sum(dim=1), torch.ones(2))
    for a, b in zip(full["cams"].numpy(), half["cams"].numpy()):
        assert pearson(a, b) > 0.9  # bf16 rounding moves the map a little, not its shape


def test_layer_choices_and_callers_in_inference_mode():
    model = family_model("resnet")
    x = images(2)
    by_module = CamEngine(model, target_layer=model.layer3)
    assert by_module.target_layer_name == "layer3"
    by_name = CamEngine(model, target_layer="layer3")
    with torch.inference_mode():
        inside = by_name(x)
    torch.testing.assert_close(inside["cams"], by_module(x)["cams"])
    with pytest.raises(ValueError, match="not a submodule"):
        CamEngine(model, target_layer=nn.Linear(2, 2))


def test_target_stride_picks_the_layer_and_the_map_resolution():
    model = family_model("resnet")
    x = images(2)
    sides = {}
    for stride, layer in ((8, model.layer2), (16, model.layer3), (32, model.layer4[0])):
        engine = CamEngine(model, target_stride=stride)
        assert engine.target_layer is layer and engine.target_stride == stride
        assert f"target_stride={stride}" in repr(engine)
        handle = layer.register_forward_hook(lambda _m, _i, out, s=stride: sides.update({s: out.shape[-1]}))
        try:
            assert engine(x)["cams"].shape == (2, SIZE, SIZE)  # maps come from that layer's grid, upsampled
        finally:
            handle.remove()
    assert sides == {8: 12, 16: 6, 32: 3}
    assert CamEngine(model).target_stride == DEFAULT_TARGET_STRIDE
    named = CamEngine(model, target_layer="layer3", target_stride=8)  # a named layer wins over a stride
    assert named.target_layer is model.layer3 and named.target_stride == 16
    assert CamEngine(model, target_layer="layer3.0.conv1").target_stride is None  # not a stage: unknown
    vit = CamEngine(family_model("vit"))
    assert vit.target_stride == 16 and vit.target_layer_name.endswith("norm1")
    with pytest.raises(ValueError, match="transformer.*stride 16"):
        CamEngine(family_model("vit"), target_stride=8)
    with pytest.raises(ValueError, match="no stride-64 feature map.*2, 4, 8, 16, 32"):
        CamEngine(model, target_stride=64)


def test_drray_model_card_stride_and_layer():
    from drray.models.model import create_model

    model = create_model("test_convnext", head="classification", image_size=64).eval()
    model.card.cam_target_stride = 16
    engine = CamEngine(model)
    assert engine.target_layer_name == "backbone.stages.2" and engine.target_stride == 16
    assert CamEngine(model, target_stride=32).target_layer_name == "backbone.stages.3"
    model.card.cam_target_layer = "stages.1"
    assert CamEngine(model).target_layer_name == "backbone.stages.1"
    out = CamEngine(model)(images(2, size=64))
    assert out["cams"].shape == (2, 64, 64) and torch.isfinite(out["cams"]).all()


def test_clear_errors():
    model = family_model("resnet")
    with pytest.raises(ValueError, match="unknown CAM method 'gradkam'.*gradcam"):
        CamEngine(model, method="gradkam")
    with pytest.raises(ValueError, match="unknown CAM target"):
        CamEngine(model, target="biggest")
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        CamEngine(model)(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="2 target grades for a batch of 3"):
        CamEngine(model)(images(3), target=[1, 2])
    assert get_method("Grad-CAM++").name == "gradcam++" and get_method("grad_cam").name == "gradcam"


def test_frozen_eval_restores_on_error():
    model = family_model("resnet")
    with pytest.raises(KeyError):
        with frozen_eval(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise KeyError("boom")
    assert all(p.requires_grad for p in model.parameters())
