"""CAM target layers: every timm family resolves to a layer whose (reshaped) output is a spatial map."""

from __future__ import annotations

import logging

import pytest
import timm
import torch
from torch import nn

from drray.cam.target_layers import (
    find_last_spatial_layer,
    nhwc_to_nchw,
    resolve_target_layer,
    token_grid,
    tokens_to_nchw,
)

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
EXPECTED = {  # the per-family rule, spelled out for the families the brief names
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


def build(name: str) -> tuple[nn.Module, int]:
    kwargs = dict(TINY.get(name, {}))
    if name in FIXED_SIZE:
        kwargs["img_size"] = SIZE
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
    return model, kwargs.get("img_size", SIZE)


def layer_output(model: nn.Module, layer: nn.Module, size: int) -> torch.Tensor:
    seen = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, size, size))
    finally:
        handle.remove()
    return seen["out"]


@pytest.mark.parametrize("name", timm.list_models("test_*") + sorted(TINY))
def test_every_family_resolves_to_a_spatial_map(name):
    model, size = build(name)
    layer, reshape, layer_name = resolve_target_layer(model)
    assert model.get_submodule(layer_name) is layer
    if name in EXPECTED:
        assert layer_name == EXPECTED[name]
    out = layer_output(model, layer, size)
    fmap = reshape(out) if reshape is not None else out
    assert fmap.ndim == 4 and fmap.shape[0] == 2
    assert fmap.shape[2] > 1 and fmap.shape[3] > 1, f"{name}: {layer_name} gives {tuple(fmap.shape)}"


def test_transformer_transform_drops_every_prefix_token():
    model, size = build("vit_small_patch16_224")  # a class token and 2 register tokens
    assert model.num_prefix_tokens == 3
    layer, reshape, _ = resolve_target_layer(model)
    tokens = layer_output(model, layer, size)
    fmap = reshape(tokens)
    grid = size // 16
    assert tuple(fmap.shape) == (2, tokens.shape[-1], grid, grid)
    # patch token (row 1, col 2) lands at map position (1, 2)
    torch.testing.assert_close(fmap[:, :, 1, 2], tokens[:, 3 + 1 * grid + 2])


def test_named_layer_and_missing_name():
    model, _ = build("test_resnet")
    layer, reshape, name = resolve_target_layer(model, "layer3")
    assert layer is model.layer3 and reshape is None and name == "layer3"
    with pytest.raises(ValueError, match="no submodule 'layer9'.*fc"):
        resolve_target_layer(model, "layer9")
    vit, _ = build("test_vit")
    _, reshape, _ = resolve_target_layer(vit, "blocks.2.norm1")
    assert reshape is not None  # tokens inside a transformer still need their grid


def test_drray_model_resolves_inside_its_backbone():
    from drray.models.model import create_model

    model = create_model("test_resnet", head="classification", image_size=64)
    layer, _, name = resolve_target_layer(model)
    assert name == "backbone.layer4.0" and model.get_submodule(name) is layer
    layer, _, name = resolve_target_layer(model, "layer3")
    assert name == "backbone.layer3" and layer is model.backbone.layer3
    model.card.cam_target_layer = "layer2"
    assert resolve_target_layer(model)[2] == "backbone.layer2"


class TinyNet(nn.Module):
    """A family no table knows: the fallback must find `features` (the last map before pooling)."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_generic_fallback_finds_the_last_map_and_says_so(caplog):
    model = TinyNet()
    with caplog.at_level(logging.INFO, logger="drray.cam.target_layers"):
        layer, reshape, name = resolve_target_layer(model, input_size=32)
    assert name == "features" and layer is model.features and reshape is None
    assert "no CAM target-layer rule for TinyNet" in caplog.text
    assert not any(m._forward_hooks for m in model.modules())


def test_generic_fallback_detects_channels_last():
    model, _ = build("test_mambaout")
    name, layout = find_last_spatial_layer(model, 64)
    assert layout == "nhwc" and name.startswith("stages")


def test_pure_reshape_functions():
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 prefix + 2x2 patches
    fmap = tokens_to_nchw(x, num_prefix_tokens=1, grid_size=(2, 2))
    assert fmap.shape == (2, 3, 2, 2) and fmap.data_ptr() == x[:, 1:].data_ptr()  # a view, no copy
    assert token_grid(16, (10, 10)) == (4, 4)  # a dynamic-size ViT fed a smaller square image
    with pytest.raises(ValueError, match="not a square"):
        token_grid(12, (10, 10))
    assert nhwc_to_nchw(torch.zeros(1, 4, 5, 6)).shape == (1, 6, 4, 5)
