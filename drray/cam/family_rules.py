"""Each family's final map, the last spatial map before global pooling: one small rule per timm class.

The finer strides come from timm's `feature_info` (drray.cam.target_layers); only the deepest map
needs a rule, because some families normalise or project after their last stage (EfficientNet's
conv_head + bn2, ConvNeXt's head-first norm). Registered with `@_rule(class names)`, as timm
registers models.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

FAMILY_RULES: dict[str, Callable[[nn.Module], tuple[str, str]]] = {}
"""Class name -> the family's final map (the deepest stride). Subclasses match through the MRO
(deit's VisionTransformerDistilled is a VisionTransformer). Values are functions of the model
returning (dotted name, layout), layout being "nchw", "nhwc" or "tokens"; timm's own facts
(output_fmt, num_prefix_tokens) take precedence over the layout written here."""


def _rule(*class_names: str):
    def register(fn):
        for class_name in class_names:
            FAMILY_RULES[class_name] = fn
        return fn

    return register


def _last(model: nn.Module, container: str) -> str:
    """Dotted name of the last child of a Sequential/ModuleList, e.g. `layer4.2`."""
    children = list(model.get_submodule(container).named_children())
    if not children:
        raise ValueError(f"{type(model).__name__}.{container} has no children to take the last of")
    return f"{container}.{children[-1][0]}"


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


@_rule("ResNet")  # resnet, resnext, seresnet, resnet-d, ...: the last bottleneck, after its ReLU
def _resnet(model):
    return _last(model, "layer4"), "nchw"


@_rule("EfficientNet")  # efficientnet, mobilenetv2, mnasnet: bn2 is BN + activation after conv_head
def _efficientnet(model):
    return ("bn2" if not _is_identity(getattr(model, "bn2", None)) else "conv_head"), "nchw"


@_rule("MobileNetV3")  # conv_head runs after global pooling here, so the map is the last block
def _mobilenetv3(model):
    return _last(model, "blocks"), "nchw"


@_rule("ConvNeXt")
def _convnext(model):
    # head_norm_first variants normalise before pooling: that output is the final map.
    if not _is_identity(getattr(model, "norm_pre", None)):
        return "norm_pre", "nchw"
    return _last(model, "stages"), "nchw"


@_rule("RegNet")
def _regnet(model):
    return ("s4" if _is_identity(getattr(model, "final_conv", None)) else "final_conv"), "nchw"


@_rule("DenseNet")  # norm5 is BN + ReLU on the concatenated features
def _densenet(model):
    return "features.norm5", "nchw"


@_rule("ByobNet", "NormFreeNet")
def _byob(model):
    if not _is_identity(getattr(model, "final_act", None)):
        return "final_act", "nchw"
    if not _is_identity(getattr(model, "final_conv", None)):
        return "final_conv", "nchw"
    return _last(model, "stages"), "nchw"


@_rule("MaxxVit")  # coatnet, maxvit: NCHW stages, then a pre-pool norm
def _maxxvit(model):
    return ("norm" if not _is_identity(getattr(model, "norm", None)) else _last(model, "stages")), "nchw"


@_rule("VisionTransformer", "Eva", "VisionTransformerRelPos", "Beit")
def _vit(model):
    return f"{_last(model, 'blocks')}.norm1", "tokens"


@_rule("SwinTransformer")  # pytorch-grad-cam's choice: norm1 of the last block (pre-norm, NHWC)
def _swin(model):
    stage = _last(model, "layers")
    return f"{_last(model, f'{stage}.blocks')}.norm1", "nhwc"


@_rule("SwinTransformerV2")  # post-norm blocks: norm1 follows attention, so take the stage output
def _swinv2(model):
    return _last(model, "layers"), "nhwc"


@_rule("MambaOut")
def _mambaout(model):
    return _last(model, "stages"), "nhwc"
