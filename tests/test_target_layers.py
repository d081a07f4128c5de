"""CAM target layers: every timm family resolves, by stride or by name, to a layer whose (reshaped) output is a map."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from torch import nn

from drray.cam.target_layers import (
    DEFAULT_TARGET_STRIDE,
    find_last_spatial_layer,
    layout_of,
    pin_target_layer,
    resolve_target_layer,
    stride_layers,
)
from drray.cam.reshape import nhwc_to_nchw, token_grid, tokens_to_nchw

SIZE = 96

# timm's own test models, plus tiny configurations of families that have none. Models with a
# fixed input size are built for SIZE.
FIXED_SIZE = {"test_coatnet", "test_maxvit", "test_vit", "test_vit2", "test_vit3", "test_vit4", "test_vit_relpos"}
TINY = {
    "regnetx_002": {},
    "densenet121": dict(growth_rate=8, block_config=(1, 1, 1, 1)),
    "mobilenetv3_small_050": {},
    "swin_tiny_patch4_window7_224": dict(img_size=SIZE, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4),
    "swinv2_tiny_window8_256": dict(img_size=SIZE, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4),
    "deit_tiny_distilled_patch16_224": dict(img_size=SIZE, embed_dim=32, depth=2, num_heads=2),
    "eva02_tiny_patch14_224": dict(img_size=84, embed_dim=32, depth=2, num_heads=2),
    "vit_small_patch16_224": dict(img_size=SIZE, embed_dim=32, depth=2, num_heads=2, reg_tokens=2),
}
TEST_MODELS = timm.list_models("test_*")
FINAL = {  # the per-family rule for the deepest stride, spelled out for the families the brief names
    "test_resnet": "layer4.0",
    "test_efficientnet": "bn2",
    "test_convnext": "stages.3",
    "test_vit": "blocks.5.norm1",
    "test_nfnet": "final_act",
    "regnetx_002": "s4",
    "densenet121": "features.norm5",
    "mobilenetv3_small_050": "blocks.5",
    "swin_tiny_patch4_window7_224": "layers.1.blocks.0.norm1",
    "swinv2_tiny_window8_256": "layers.1",
    "deit_tiny_distilled_patch16_224": "blocks.1.norm1",
    "eva02_tiny_patch14_224": "blocks.1.norm1",
}
TRANSFORMERS = {n for n in TEST_MODELS if n.startswith("test_vit")} | {
    "deit_tiny_distilled_patch16_224", "eva02_tiny_patch14_224", "vit_small_patch16_224"}


def build(name: str) -> tuple[nn.Module, int]:
    kwargs = dict(TINY.get(name, {}))
    if name in FIXED_SIZE:
        kwargs["img_size"] = SIZE
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
    return model, kwargs.get("img_size", SIZE)


def layer_outputs(model: nn.Module, layers: dict[str, nn.Module], size: int) -> dict[str, torch.Tensor]:
    """Each layer's (first) output in one forward of a batch of 2."""
    seen: dict[str, torch.Tensor] = {}
    handles = [layer.register_forward_hook(lambda _m, _i, out, key=key: seen.setdefault(key, out))
               for key, layer in layers.items()]
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, size, size))
    finally:
        for h in handles:
            h.remove()
    return seen


def as_map(target, out: torch.Tensor) -> torch.Tensor:
    return target.reshape(out) if target.reshape is not None else out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", TEST_MODELS + sorted(TINY))
def test_every_stride_of_every_family_is_a_map_at_that_stride(name):
    """The stride table is checked against the maps themselves: side = input side / stride."""
    model, size = build(name)
    table = stride_layers(model)
    assert table, f"{name}: no stride found"
    targets = {s: resolve_target_layer(model, stride=s) for s in table}
    outs = layer_outputs(model, {str(s): t.layer for s, t in targets.items()}, size)
    for s, t in targets.items():
        assert t.stride == s and model.get_submodule(t.name) is t.layer and t.name == table[s][0]
        fmap = as_map(t, outs[str(s)])
        assert fmap.ndim == 4 and fmap.shape[0] == 2, f"{name} stride {s}: {t.name} gives {tuple(fmap.shape)}"
        assert fmap.shape[2] == fmap.shape[3] == size // s, f"{name}: {t.name} is not at stride {s}"
    if name in FINAL:
        assert table[max(table)][0] == FINAL[name]
    if name in TRANSFORMERS:
        assert len(table) == 1 and layout_of(model) == "tokens"
    elif name in TEST_MODELS:  # every timm CNN test model has the three CAM strides
        assert {8, 16, 32} <= set(table)


@pytest.mark.timeout(30)
def test_default_stride_and_explicit_strides():
    model, _ = build("test_resnet")
    assert DEFAULT_TARGET_STRIDE in (8, 16, 32)
    default = resolve_target_layer(model)
    assert default.stride == DEFAULT_TARGET_STRIDE and default.name == stride_layers(model)[DEFAULT_TARGET_STRIDE][0]
    assert [resolve_target_layer(model, stride=s).name for s in (8, 16, 32)] == ["layer2", "layer3", "layer4.0"]
    assert resolve_target_layer(model, "layer3").stride == 16  # a named stage knows its stride
    assert resolve_target_layer(model, "layer3.0.conv1").stride is None  # inside a block: not known


@pytest.mark.timeout(30)
def test_strides_a_model_lacks_are_clear_errors():
    model, _ = build("test_resnet")
    with pytest.raises(ValueError, match=r"no stride-64 feature map; its stages give strides 2, 4, 8, 16, 32"):
        resolve_target_layer(model, stride=64)
    for bad in (0, "8", 8.0, True):
        with pytest.raises(ValueError, match="positive integer"):
            resolve_target_layer(model, stride=bad)
    swin, _ = build("swin_tiny_patch4_window7_224")  # two stages only: strides 4 and 8
    with pytest.raises(ValueError, match="strides 4, 8"):
        resolve_target_layer(swin, stride=32)
    vit, _ = build("test_vit")
    with pytest.raises(ValueError, match="transformer.*one token grid, at stride 16.*target_stride=16"):
        resolve_target_layer(vit, stride=8)


@pytest.mark.timeout(30)
def test_a_transformer_resolves_the_default_to_its_one_grid_and_says_so(caplog):
    vit, size = build("test_vit")
    with caplog.at_level(logging.INFO, logger="drray.cam.target_layers"):
        target = resolve_target_layer(vit)
    assert target.name == "blocks.5.norm1" and target.stride == 16
    assert "one token grid (stride 16)" in caplog.text
    eva, _ = build("eva02_tiny_patch14_224")  # patch 14: its grid is at stride 14, whatever the default
    assert resolve_target_layer(eva).stride == 14 and resolve_target_layer(eva, stride=14).stride == 14
    assert resolve_target_layer(vit, "blocks.2.norm1").stride == 16


@pytest.mark.timeout(30)
def test_layouts_come_from_timm_facts():
    assert layout_of(build("test_mambaout")[0]) == "nhwc"  # output_fmt NHWC
    assert layout_of(build("swin_tiny_patch4_window7_224")[0]) == "nhwc"
    assert layout_of(build("test_vit_relpos")[0]) == "tokens"  # num_prefix_tokens, even when 0
    assert layout_of(build("test_convnext")[0]) == "nchw"
    mamba, size = build("test_mambaout")
    target = resolve_target_layer(mamba, stride=16)
    fmap = as_map(target, layer_outputs(mamba, {"t": target.layer}, size)["t"])
    assert fmap.shape[2:] == (size // 16, size // 16)


@pytest.mark.timeout(30)
def test_transformer_transform_drops_every_prefix_token():
    model, size = build("vit_small_patch16_224")  # a class token and 2 register tokens
    assert model.num_prefix_tokens == 3
    target = resolve_target_layer(model)
    tokens = layer_outputs(model, {"t": target.layer}, size)["t"]
    fmap = target.reshape(tokens)
    grid = size // 16
    assert tuple(fmap.shape) == (2, tokens.shape[-1], grid, grid)
    # patch token (row 1, col 2) lands at map position (1, 2)
    torch.testing.assert_close(fmap[:, :, 1, 2], tokens[:, 3 + 1 * grid + 2])


@pytest.mark.timeout(30)
def test_named_layer_and_missing_name():
    model, _ = build("test_resnet")
    layer, reshape, name, stride = resolve_target_layer(model, "layer3")
    assert layer is model.layer3 and reshape is None and name == "layer3" and stride == 16
    with pytest.raises(ValueError, match="no submodule 'layer9'.*fc"):
        resolve_target_layer(model, "layer9")
    vit, _ = build("test_vit")
    assert resolve_target_layer(vit, "blocks.2.norm1").reshape is not None  # tokens still need their grid


@pytest.mark.timeout(30)
def test_precedence_name_stride_card_layer_card_stride_default(caplog):
    from drray.models.model import create_model

    model = create_model("test_resnet", head="classification", image_size=64)
    assert resolve_target_layer(model).name == f"backbone.{stride_layers(model.backbone)[DEFAULT_TARGET_STRIDE][0]}"
    model.card.cam_target_stride = 32
    assert resolve_target_layer(model)[2:] == ("backbone.layer4.0", 32)  # the card's stride
    model.card.cam_target_layer = "layer2"
    assert resolve_target_layer(model)[2:] == ("backbone.layer2", 8)  # the card's layer beats its stride
    assert resolve_target_layer(model, stride=16)[2:] == ("backbone.layer3", 16)  # an explicit stride beats the card
    with caplog.at_level(logging.WARNING, logger="drray.cam.target_layers"):
        target = resolve_target_layer(model, "layer1", stride=16)  # an explicit name beats everything
    assert target.name == "backbone.layer1" and target.layer is model.backbone.layer1 and target.stride == 4
    assert "target stride 16 is ignored" in caplog.text
    assert resolve_target_layer(model, "backbone.layer3").name == "backbone.layer3"
    model.card.cam_target_layer, model.card.cam_target_stride = None, 64
    with pytest.raises(ValueError, match="no stride-64"):  # a card's stride is as strict as an explicit one
        resolve_target_layer(model)


@pytest.mark.timeout(30)
def test_pin_target_layer_records_what_resolves():
    from drray.models.model import create_model

    model = create_model("test_resnet", head="ordinal", image_size=64)
    card = pin_target_layer(model, stride=16)
    assert (card.cam_target_layer, card.cam_target_stride) == ("layer3", 16)
    assert model.card.cam_target_layer is None  # a new card; the model keeps its own
    model.card = card
    assert resolve_target_layer(model)[2:] == ("backbone.layer3", 16)
    with pytest.raises(ValueError, match="needs a drray model"):
        pin_target_layer(build("test_resnet")[0])


class TinyNet(nn.Module):
    """A family no table knows and no feature_info describes: the strides are measured."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.mark.timeout(30)
def test_generic_fallback_measures_strides_and_says_so(caplog):
    model = TinyNet()
    with caplog.at_level(logging.INFO, logger="drray.cam.target_layers"):
        target = resolve_target_layer(model, input_size=32)
    assert stride_layers(model, 32) == {2: ("features.1", "nchw"), 4: ("features", "nchw")}
    assert target.name == "features" and target.layer is model.features and target.reshape is None
    assert target.stride == 4  # the nearest to the default the model has
    assert "no CAM target-layer rule for TinyNet" in caplog.text and "no stride-8 map" in caplog.text
    assert resolve_target_layer(model, input_size=32, stride=2).name == "features.1"
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.timeout(30)
def test_generic_fallback_detects_channels_last():
    model, _ = build("test_mambaout")
    name, layout = find_last_spatial_layer(model, 64)
    assert layout == "nhwc" and name.startswith("stages")


@pytest.mark.timeout(30)
def test_pure_reshape_functions():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 prefix + 2x2 patches
    fmap = tokens_to_nchw(x, num_prefix_tokens=1, grid_size=(2, 2))
    assert fmap.shape == (2, 3, 2, 2) and fmap.data_ptr() == x[:, 1:].data_ptr()  # a view, no copy
    assert token_grid(16, (10, 10)) == (4, 4)  # a dynamic-size ViT fed a smaller square image
    with pytest.raises(ValueError, match="not a square"):
        token_grid(12, (10, 10))
    assert nhwc_to_nchw(torch.zeros(1, 4, 5, 6)).shape == (1, 6, 4, 5)


@pytest.mark.timeout(30)
def test_fused_targets_resolve_finest_first_and_say_what_is_wrong(caplog):
    from drray.cam.target_layers import resolve_target_layers
    from drray.models.model import create_model

    model = create_model("test_resnet", head="ordinal", image_size=64)
    fused = resolve_target_layers(model, "layer3+backbone.layer2")
    assert [(t.name, t.stride) for t in fused] == [("backbone.layer2", 8), ("backbone.layer3", 16)]
    assert [t.name for t in resolve_target_layers(model, stride=16)] == ["backbone.layer3"]  # one layer: as before
    with caplog.at_level(logging.WARNING, logger="drray.cam.target_layers"):
        resolve_target_layers(model, "layer2+layer3", stride=32)
    assert "target stride 32 is ignored" in caplog.text
    for bad in ("layer2+layer2", "layer2+", "layer2+backbone.layer2"):
        with pytest.raises(ValueError, match="must name different layers"):
            resolve_target_layers(model, bad)
    with pytest.raises(ValueError, match="layer9"):
        resolve_target_layers(model, "layer2+layer9")
    model.card.cam_target_layer = "layer2+layer3"  # as layer selection writes it
    assert [t.name for t in resolve_target_layers(model)] == ["backbone.layer2", "backbone.layer3"]
    card = pin_target_layer(model)
    assert (card.cam_target_layer, card.cam_target_stride) == ("layer2+layer3", 8)
    with pytest.raises(ValueError, match="cam_target_layer 'layer9'"):
        create_model("test_resnet", image_size=64, cam_target_layer="layer2+layer9")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_a_fused_map_is_the_geometric_mean_of_its_layers_maps_from_one_pass(name):
    """Fusing costs no extra pass and equals what two single-layer engines give, multiplied on the finer grid."""
    from drray.cam import CamEngine
    from drray.cam.maps import fuse_maps, upsample_maps
    from drray.models.model import create_model

    torch.manual_seed(0)
    model = create_model(name, head="ordinal", image_size=SIZE).eval()
    table = stride_layers(model.backbone, SIZE)
    pair = f"{table[8][0]}+{table[16][0]}"
    x = torch.randn(2, 3, SIZE, SIZE)
    calls = {"n": 0}
    model.backbone.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    fused = CamEngine(model, "gradcam", target_layer=pair)
    assert fused.target_stride == 8 and len(fused.target_layers) == 2
    out = fused(x, methods=["gradcam", "eigencam"])
    assert calls["n"] == 1  # one forward for both layers and both methods
    # The single layers' maps on the finest layer's grid, multiplied there, then upsampled once.
    fine = tuple(s // 8 for s in x.shape[-2:])
    singles = {s: CamEngine(model, "gradcam", target_stride=s)(x, output_size=fine, methods=["gradcam", "eigencam"])
               for s in (8, 16)}
    for m in ("gradcam", "eigencam"):
        expected = upsample_maps(fuse_maps([singles[8]["cams_by_method"][m], singles[16]["cams_by_method"][m]]),
                                 tuple(x.shape[-2:]))
        torch.testing.assert_close(out["cams_by_method"][m], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["probs"], singles[8]["probs"])


@pytest.mark.timeout(30)
def test_fuse_maps_keeps_agreement_and_scale():
    from drray.cam.maps import fuse_maps

    a = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    torch.testing.assert_close(fuse_maps([a, a]), a / a.amax() + 0 * a, atol=1e-6, rtol=0)  # a map with itself
    b = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    fused = fuse_maps([a, b])
    assert fused[0, 1, 0] == 0  # where one layer sees nothing, the fused map shows nothing
    assert fused[0].argmax() == 1 and fused.max() == pytest.approx(1.0)
    assert fuse_maps([a]) is a
    empty = torch.zeros_like(a)  # a layer with no positive evidence abstains instead of blanking the map
    torch.testing.assert_close(fuse_maps([a, empty]), fuse_maps([a]) / a.amax(), atol=1e-6, rtol=0)
    assert fuse_maps([empty, empty]).abs().max() == 0
    both = fuse_maps([torch.cat([a, empty]), torch.cat([b, b])])  # per image: image 2 takes b alone
    torch.testing.assert_close(both[1], b[0], atol=1e-6, rtol=0)


@pytest.mark.timeout(30)
def test_layers_are_fused_on_the_finest_grid_in_either_order():
    from drray.cam.maps import fuse_maps, fuse_on_finest_grid, upsample_maps

    torch.manual_seed(0)
    fine, coarse = torch.rand(2, 8, 8), torch.rand(2, 4, 4)
    fused = fuse_on_finest_grid([coarse, fine])
    assert fused.shape == (2, 8, 8)
    torch.testing.assert_close(fused, fuse_on_finest_grid([fine, coarse]))
    torch.testing.assert_close(fused, fuse_maps([fine, upsample_maps(coarse, (8, 8))]))
    assert fuse_on_finest_grid([coarse]) is coarse
