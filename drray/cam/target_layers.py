"""The CAM target layer of a model: a small per-family table, with a generic fallback.

A CAM is computed from the activations of one layer. For a CNN it is the last spatial feature
map before global pooling; for a vision transformer it is the token sequence entering the last
block's attention (the `norm1` of the last block, as pytorch-grad-cam recommends), turned back
into a (B, C, h, w) map by a reshape transform that drops the prefix tokens (class, register,
distillation) and lays the patch tokens on their grid. Models whose stages run channels-last
(Swin, MambaOut) get a transform from NHWC to NCHW.

    layer, reshape, name = resolve_target_layer(model)          # per family
    layer, reshape, name = resolve_target_layer(model, "layer4.1")

A drray model (anything with a `backbone` module and `grade_probs`) is resolved inside its
backbone; the returned name is then prefixed `backbone.` so `model.get_submodule(name)` finds it.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]

# Class name -> how to find the layer. Subclasses match through the MRO (deit's
# VisionTransformerDistilled is a VisionTransformer). Values are functions of the model
# returning (dotted name, layout), layout being "nchw", "nhwc" or "tokens".
_FAMILY_RULES: dict[str, Callable[[nn.Module], tuple[str, str]]] = {}


def _rule(*class_names: str):
    def register(fn):
        for class_name in class_names:
            _FAMILY_RULES[class_name] = fn
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


def nhwc_to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, H, W), a view."""
    if x.ndim != 4:
        raise ValueError(f"expected a channels-last (B, H, W, C) map, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2)


def token_grid(num_patches: int, grid_size: tuple[int, int] | None) -> tuple[int, int]:
    """Patch grid (h, w) of `num_patches` tokens: the model's grid when it fits, else a square one."""
    if grid_size is not None and grid_size[0] * grid_size[1] == num_patches:
        return int(grid_size[0]), int(grid_size[1])
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    raise ValueError(
        f"cannot lay {num_patches} patch tokens on a grid: the model's grid is {grid_size} and the count is "
        "not a square; feed square images or pass reshape_transform= explicitly")


def tokens_to_nchw(x: torch.Tensor, num_prefix_tokens: int = 1,
                   grid_size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, prefix + h*w, C) transformer tokens -> (B, C, h, w) patch map, a view (no copy)."""
    if x.ndim != 3:
        raise ValueError(f"expected transformer tokens (B, N, C), got shape {tuple(x.shape)}")
    b, n, c = x.shape
    h, w = token_grid(n - num_prefix_tokens, grid_size)
    return x[:, num_prefix_tokens:].reshape(b, h, w, c).permute(0, 3, 1, 2)


def _tokens_transform(model: nn.Module) -> ReshapeTransform:
    patch_embed = getattr(model, "patch_embed", None)
    grid = getattr(patch_embed, "grid_size", None)
    # functools.partial of a module-level function pickles, so engines can travel to Ray actors.
    return functools.partial(tokens_to_nchw, num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
                             grid_size=tuple(grid) if grid is not None else None)


def _transform_for(model: nn.Module, layout: str) -> ReshapeTransform | None:
    if layout == "tokens":
        return _tokens_transform(model)
    if layout == "nhwc":
        return nhwc_to_nchw
    return None


def is_drray_model(model: nn.Module) -> bool:
    """A drray model wraps a timm `backbone` and maps its outputs to grade probabilities."""
    return isinstance(getattr(model, "backbone", None), nn.Module) and callable(getattr(model, "grade_probs", None))


def family_of(model: nn.Module) -> str | None:
    """The first class name in the model's MRO that the family table knows, else None."""
    for cls in type(model).__mro__:
        if cls.__name__ in _FAMILY_RULES:
            return cls.__name__
    return None


def _candidates(model: nn.Module, limit: int = 8) -> str:
    names = [n for n, m in model.named_modules() if n and not list(m.children())]
    tail = names[-limit:]
    return ", ".join(tail) + (" ..." if len(names) > limit else "")


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no submodule {name!r}; some of its last layers are: "
            f"{_candidates(model)} (see model.named_modules() for all)") from None


def _layout_of_named(model: nn.Module, name: str) -> str:
    """Layout of a layer the user named: tokens inside a transformer, NHWC in channels-last families."""
    family = family_of(model)
    if family is None:
        return "nchw"
    _, layout = _FAMILY_RULES[family](model)
    if layout == "tokens" and name.startswith("patch_embed"):
        return "nchw"  # the patch-embedding conv of a transformer
    return layout


def _dry_input_size(model: nn.Module, input_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """Input side(s) for the dry forward: given, else the model's fixed image size, else its default config."""
    size = input_size
    for owner in (model, getattr(model, "patch_embed", None)):
        if size is None and owner is not None and getattr(owner, "img_size", None) is not None:
            size = owner.img_size
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def find_last_spatial_layer(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> tuple[str, str]:
    """Generic fallback: the last module (in execution order) whose output is a (B, C, h, w) map with h, w > 1.

    One batch-1 forward with a forward hook on every module, at `input_size` or the model's own
    image size. A parent container fires after its children, so the outermost module holding the
    final map wins; identities are skipped. Maps with `num_features` channels (what the head pools)
    are preferred; the layout is channels-last when the last axis, not the second, has them.
    """
    seen: list[tuple[str, tuple[int, ...]]] = []
    handles = []
    for name, module in model.named_modules():
        if not name or isinstance(module, nn.Identity):
            continue
        handles.append(module.register_forward_hook(
            lambda _m, _i, out, name=name: seen.append((name, tuple(out.shape)))
            if isinstance(out, torch.Tensor) else None))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    height, width = _dry_input_size(model, input_size)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width, device=device))
    except Exception as e:
        raise ValueError(
            f"the dry forward of {type(model).__name__} at {height}x{width} px, used to find its CAM target "
            f"layer, failed ({e}); pass input_size= or the target layer's name") from e
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    num_features = getattr(model, "num_features", None)
    maps = []
    for name, shape in seen:
        if len(shape) != 4:
            continue
        nhwc = num_features is not None and shape[-1] == num_features and shape[1] != num_features
        h, w = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
        if h > 1 and w > 1:
            maps.append((name, "nhwc" if nhwc else "nchw", num_features in (shape[1], shape[-1])))
    if not maps:
        raise ValueError(
            f"found no 4-D spatial feature map in {type(model).__name__} at {height}x{width} px; pass the "
            f"target layer's name (and a reshape_transform) explicitly, e.g. one of: {_candidates(model)}")
    preferred = [m for m in maps if m[2]] or maps
    name, layout, _ = preferred[-1]
    return name, layout


def _resolve_in(model: nn.Module, name: str | None, input_size: int | tuple[int, int] | None
                ) -> tuple[nn.Module, ReshapeTransform | None, str]:
    if name is not None:
        return _get(model, name), _transform_for(model, _layout_of_named(model, name)), name
    family = family_of(model)
    if family is not None:
        name, layout = _FAMILY_RULES[family](model)
    else:
        name, layout = find_last_spatial_layer(model, input_size)
        log.info("no CAM target-layer rule for %s; using the last spatial feature map %r (%s)",
                 type(model).__name__, name, layout)
    return model.get_submodule(name), _transform_for(model, layout), name


def resolve_target_layer(model: nn.Module, name: str | None = None,
                         input_size: int | tuple[int, int] | None = None,
                         ) -> tuple[nn.Module, ReshapeTransform | None, str]:
    """(layer, reshape transform or None, dotted name) of the CAM target layer of `model`.

    name: a dotted module name (`model.get_submodule(name)`); None picks the layer per family,
    or for a drray model the card's `cam_target_layer` when set. For a drray model, names are
    looked up in the model first and then inside its backbone.
    input_size: image side(s) for the dry forward of the generic fallback (families outside the
    table); default: the model's own image size (a drray model's card input size).
    """
    if not is_drray_model(model):
        return _resolve_in(model, name, input_size)
    backbone = model.backbone
    card = getattr(model, "card", None)
    if name is None:
        name = getattr(card, "cam_target_layer", None)
    if input_size is None:
        input_size = getattr(card, "input_size", None)
    if name is not None and name.startswith("backbone."):
        name = name[len("backbone."):]
    elif name is not None and name not in dict(backbone.named_modules()) and name in dict(model.named_modules()):
        layer = model.get_submodule(name)  # a layer of the wrapper itself, outside the backbone
        return layer, None, name
    layer, reshape, inner = _resolve_in(backbone, name, input_size)
    return layer, reshape, f"backbone.{inner}"


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of `layer` inside `model`, or a ValueError when it is not one of its modules."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"the target layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
