"""The CAM target layer of a model, chosen by resolution (output stride) or by name.

A CAM is computed from the activations of one layer, and its resolution is that layer's: the
last map of a CNN (output stride 32) is 6 x 6 at 192 px, too coarse to land on a microaneurysm.
`target_stride` picks the last layer at stride 8, 16 or 32 instead. The strides come from the
model where timm states them (`model.feature_info`: each stage's module and reduction); the
deepest stride is the family's final map (a small per-family table: the last spatial map before
global pooling, e.g. EfficientNet's bn2 after conv_head); models that state nothing are measured
with one dry forward. DEFAULT_TARGET_STRIDE was chosen by benchmarks/cam_validity.py (see
benchmarks/README.md): with stride 8 the Grad-CAM peak of the demo model lands on a lesion in far
more images than with the last map.

A vision transformer keeps one token grid (stride = its patch size) in every block, so it has
one resolution: its layer is the token sequence entering the last block's attention (the `norm1`
of the last block, as pytorch-grad-cam recommends), laid back on the patch grid by a reshape
transform that drops the prefix tokens (class, register, distillation: timm's
`num_prefix_tokens`). The default stride resolves to that grid (logged); asking a transformer
for any other stride is a ValueError. Channels-last models (timm's `output_fmt == "NHWC"`:
Swin, MambaOut) get a transform from NHWC to NCHW.

    target = resolve_target_layer(model)                 # the default stride
    target = resolve_target_layer(model, stride=16)      # the last stride-16 map
    target = resolve_target_layer(model, "layer4.1")     # by name
    target.layer, target.reshape, target.name, target.stride

Precedence: an explicit name > an explicit stride > a drray model card's `cam_target_layer` >
its `cam_target_stride` > DEFAULT_TARGET_STRIDE. Where a dataset has lesion masks the card's layer
is measured, not assumed: drray.explain.select_layer scores every stride on the validation split
and writes the best into the card. A drray model (anything with a `backbone`
module and `grade_probs`) is resolved inside its backbone; the returned name is then prefixed
`backbone.` so `model.get_submodule(name)` finds it.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

from torch import nn

from drray.cam.dry_run import dry_run, spatial_maps
from drray.cam.family_rules import FAMILY_RULES
from drray.cam.reshape import ReshapeTransform, transform_for

log = logging.getLogger(__name__)


CAM_STRIDES = (8, 16, 32)
"""Output strides a configuration may ask for (drray.config.CamConfig.target_stride)."""

FUSE_SEP = "+"
"""Joins the layers of a fused target (`layer2+layer3`): their maps are multiplied into one."""

DEFAULT_TARGET_STRIDE = 8
"""Stride of the default map (its resolution); chosen by benchmarks/cam_validity.py."""

DEFAULT_FUSED_STRIDES = (8, 16)
"""When nothing names a layer or a stride, the maps of these strides are fused (where the model has
both; a transformer's one grid stands alone): on the demo models the fused map's peak lands on a
lesion in 0.97-0.98 of the test images with lesions against 0.84-0.90 for stride 8 alone, at the
same cost (benchmarks/README.md, CAM validity)."""


class TargetLayer(NamedTuple):
    """A resolved CAM target layer."""

    layer: nn.Module
    reshape: ReshapeTransform | None
    """Turns the layer's output into (B, C, h, w); None when it already is."""
    name: str
    """Dotted name in the model passed in (`model.get_submodule(name) is layer`)."""
    stride: int | None
    """Output stride of the layer's map (input side / map side); None when not known."""


def is_drray_model(model: nn.Module) -> bool:
    """A drray model wraps a timm `backbone` and maps its outputs to grade probabilities."""
    return isinstance(getattr(model, "backbone", None), nn.Module) and callable(getattr(model, "grade_probs", None))


def family_of(model: nn.Module) -> str | None:
    """The first class name in the model's MRO that the family table knows, else None."""
    for cls in type(model).__mro__:
        if cls.__name__ in FAMILY_RULES:
            return cls.__name__
    return None


def layout_of(model: nn.Module) -> str:
    """"tokens", "nhwc" or "nchw": what timm says (num_prefix_tokens, output_fmt), else the family table."""
    fmt = getattr(model, "output_fmt", None)
    if str(getattr(fmt, "value", fmt)).upper() == "NHWC":
        return "nhwc"
    if isinstance(getattr(model, "num_prefix_tokens", None), int) and hasattr(model, "patch_embed"):
        return "tokens"
    family = family_of(model)
    return FAMILY_RULES[family](model)[1] if family is not None else "nchw"


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
    """Layout of a layer the user named: tokens inside a transformer, NHWC in channels-last models."""
    layout = layout_of(model)
    if layout == "tokens" and name.startswith("patch_embed"):
        return "nchw"  # the patch-embedding conv of a transformer
    return layout


def find_last_spatial_layer(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> tuple[str, str]:
    """Generic fallback: the last module (in execution order) whose output is a (B, C, h, w) map with h, w > 1.

    One batch-1 forward with a forward hook on every module, at `input_size` or the model's own
    image size. A parent container fires after its children, so the outermost module holding the
    final map wins; identities are skipped. Maps with `num_features` channels (what the head pools)
    are preferred; the layout is channels-last when the last axis, not the second, has them.
    """
    seen, (height, width) = dry_run(model, input_size)
    maps = spatial_maps(model, seen)
    if not maps:
        raise ValueError(
            f"found no 4-D spatial feature map in {type(model).__name__} at {height}x{width} px; pass the "
            f"target layer's name (and a reshape_transform) explicitly, e.g. one of: {_candidates(model)}")
    preferred = [m for m in maps if m[3]] or maps
    name, layout, _, _ = preferred[-1]
    return name, layout


def _feature_stages(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, reduction) of each stage timm lists in `model.feature_info`; [] when it lists none."""
    info = getattr(model, "feature_info", None)
    if hasattr(info, "get_dicts"):  # a features_only wrapper's FeatureInfo
        info = info.get_dicts()
    if not isinstance(info, (list, tuple)):
        return []
    modules = dict(model.named_modules())
    return [(e["module"], int(e["reduction"])) for e in info
            if isinstance(e, dict) and e.get("module") in modules and e.get("reduction")]


def _token_stride(model: nn.Module) -> int | None:
    stages = _feature_stages(model)
    if stages:
        return stages[-1][1]
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        return None
    return int(patch if isinstance(patch, int) else patch[0])


def _final_map(model: nn.Module, input_size) -> tuple[str, str]:
    """The family's final map, else the last spatial map a dry forward finds (logged)."""
    family = family_of(model)
    if family is not None:
        return FAMILY_RULES[family](model)
    name, layout = find_last_spatial_layer(model, input_size)
    log.info("no CAM target-layer rule for %s; using the last spatial feature map %r (%s)",
             type(model).__name__, name, layout)
    return name, layout


def stride_layers(model: nn.Module, input_size: int | tuple[int, int] | None = None) -> dict[int, tuple[str, str]]:
    """{output stride: (dotted name, layout)} of the CAM layer at each resolution, finest first.

    Each stride maps to the last stage timm lists at that reduction, the deepest to the family's
    final map. A transformer has one entry (its patch grid). A model without feature_info is
    measured: one dry forward at `input_size`, the last map at each stride.
    """
    final, final_layout = _final_map(model, input_size)
    layout = layout_of(model)
    if layout == "tokens" or final_layout == "tokens":
        stride = _token_stride(model)
        return {stride: (final, "tokens")} if stride is not None else {}
    table = {reduction: (name, layout) for name, reduction in _feature_stages(model)}
    if not table:
        seen, (height, _) = dry_run(model, input_size)
        for name, map_layout, h, _ in spatial_maps(model, seen):
            table[max(1, round(height / h))] = (name, map_layout)
    if table:
        table[max(table)] = (final, final_layout if layout == "nchw" else layout)
    return dict(sorted(table.items()))


def _nearest(strides: list[int], wanted: int) -> int:
    """The stride closest to `wanted` on a log scale; the coarser of two equally close."""
    return min(strides, key=lambda s: (abs(math.log2(s / wanted)), -s))


def _pick_stride(model: nn.Module, table: dict[int, tuple[str, str]], stride: int | None, strict: bool) -> int:
    kind = type(model).__name__
    if not table:
        raise ValueError(f"found no feature map of {kind} at any stride; name the CAM target layer instead")
    wanted = DEFAULT_TARGET_STRIDE if stride is None else int(stride)
    if wanted in table:
        return wanted
    tokens = next(iter(table.values()))[1] == "tokens"
    only = next(iter(table))
    if strict:
        if tokens:
            raise ValueError(
                f"{kind} is a transformer: every block keeps one token grid, at stride {only} (its patch size), "
                f"so it has no stride-{wanted} layer; pass target_stride={only} or None, or name a layer")
        raise ValueError(
            f"{kind} has no stride-{wanted} feature map; its stages give strides "
            f"{', '.join(map(str, table))}: pass one of those, None for the default, or a layer name")
    chosen = only if tokens else _nearest(list(table), wanted)
    if tokens:
        log.info("%s is a transformer with one token grid (stride %d); the default stride %d resolves to it",
                 kind, chosen, wanted)
    else:
        log.info("%s has no stride-%d map (it has %s); using stride %d", kind, wanted,
                 ", ".join(map(str, table)), chosen)
    return chosen


def _stride_of_named(model: nn.Module, name: str, table: dict[int, tuple[str, str]]) -> int | None:
    """Stride of a named layer when the stride table or timm's stage list has it (every layer of a transformer)."""
    for s, (n, layout) in table.items():
        if n == name or layout == "tokens":
            return s
    for n, reduction in _feature_stages(model):
        if n == name:
            return reduction
    return None


def _check_stride_arg(stride: int | None) -> None:
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
        raise ValueError(f"target stride must be a positive integer such as {', '.join(map(str, CAM_STRIDES))}, "
                         f"got {stride!r}")


def _resolve_in(model: nn.Module, name: str | None, input_size, stride: int | None, strict: bool) -> TargetLayer:
    if name is not None:
        layer = _get(model, name)
        try:
            known = _stride_of_named(model, name, stride_layers(model, input_size))
        except ValueError:  # a model the dry forward cannot run: the layer was named, its stride stays unknown
            known = None
        return TargetLayer(layer, transform_for(model, _layout_of_named(model, name)), name, known)
    table = stride_layers(model, input_size)
    chosen = _pick_stride(model, table, stride, strict)
    name, layout = table[chosen]
    return TargetLayer(model.get_submodule(name), transform_for(model, layout), name, chosen)


def resolve_target_layer(model: nn.Module, name: str | None = None,
                         input_size: int | tuple[int, int] | None = None,
                         stride: int | None = None) -> TargetLayer:
    """(layer, reshape transform or None, dotted name, stride) of the CAM target layer of `model`.

    name: a dotted module name (`model.get_submodule(name)`); wins over `stride` (a warning says so).
    stride: the output stride of the map (8, 16, 32; see `stride_layers`); a stride the model does
    not have is a ValueError naming those it has. With neither, a drray model's card decides
    (`cam_target_layer`, then `cam_target_stride`), else DEFAULT_TARGET_STRIDE or the model's
    nearest stride (a transformer's only grid). For a drray model, names are looked up in the
    backbone, with or without the `backbone.` prefix, then in the wrapper.
    input_size: image side(s) for the dry forward of models timm states no strides for; default:
    the model's own image size (a drray model's card input size).
    """
    _check_stride_arg(stride)
    if name is not None and stride is not None:
        log.warning("CAM target layer %r was named, so target stride %d is ignored", name, stride)
        stride = None
    strict = stride is not None
    if not is_drray_model(model):
        return _resolve_in(model, name, input_size, stride, strict)
    backbone = model.backbone
    card = getattr(model, "card", None)
    if name is None and stride is None:
        name = getattr(card, "cam_target_layer", None)
        stride = getattr(card, "cam_target_stride", None) if name is None else None
        _check_stride_arg(stride)
        strict = stride is not None
    if input_size is None:
        input_size = getattr(card, "input_size", None)
    if name is not None and name.startswith("backbone."):
        name = name[len("backbone."):]
    elif name is not None and name not in dict(backbone.named_modules()) and name in dict(model.named_modules()):
        return TargetLayer(model.get_submodule(name), None, name, None)  # a layer of the wrapper itself
    inner = _resolve_in(backbone, name, input_size, stride, strict)
    return inner._replace(name=f"backbone.{inner.name}")


def resolve_target_layers(model: nn.Module, name: str | None = None,
                          input_size: int | tuple[int, int] | None = None,
                          stride: int | None = None) -> list[TargetLayer]:
    """The CAM target layers of `model`: one, or several for a fused target, finest first.

    A fused target names several layers joined by FUSE_SEP (`"layer2+layer3"`, as an argument or a
    card's `cam_target_layer`): the engine computes the map at each layer from the same forward and
    backward pass and multiplies them (a geometric mean), so a location stands out only where the
    layers agree. Otherwise the same as `resolve_target_layer`, in a list of one.
    """
    card = getattr(model, "card", None) if is_drray_model(model) else None
    if name is None and stride is None:
        name = getattr(card, "cam_target_layer", None)
        if name is None and getattr(card, "cam_target_stride", None) is None:
            return _default_layers(model, input_size)
    if not name or FUSE_SEP not in name:
        return [resolve_target_layer(model, name, input_size, stride)]
    if stride is not None:
        log.warning("CAM target layers %r were named, so target stride %d is ignored", name, stride)
    parts = [p.strip() for p in name.split(FUSE_SEP)]
    layers = [resolve_target_layer(model, p, input_size) for p in parts]
    names = [t.name for t in layers]
    if "" in parts or len(set(names)) != len(names):
        raise ValueError(f"fused CAM target {name!r} must name different layers, each once: e.g. 'layer2+layer3'")
    # Finest first: the first map's stride is the fused map's resolution.
    return sorted(layers, key=lambda t: (t.stride is None, t.stride or 0))


def _default_layers(model: nn.Module, input_size) -> list[TargetLayer]:
    """DEFAULT_FUSED_STRIDES where the model has each of them, else the default stride alone."""
    net = model.backbone if is_drray_model(model) else model
    if input_size is None and is_drray_model(model):
        input_size = getattr(model.card, "input_size", None)
    table = stride_layers(net, input_size)
    if all(s in table for s in DEFAULT_FUSED_STRIDES) and len({table[s][0] for s in DEFAULT_FUSED_STRIDES}) > 1:
        return [resolve_target_layer(model, stride=s, input_size=input_size) for s in DEFAULT_FUSED_STRIDES]
    return [resolve_target_layer(model, input_size=input_size)]


def fused_name(names: list[str]) -> str:
    """The dotted names of fused target layers as one name (`backbone.layer2+backbone.layer3`)."""
    return FUSE_SEP.join(names)


def pin_target_layer(model: nn.Module, name: str | None = None, stride: int | None = None):
    """A drray model's card with `cam_target_layer` and `cam_target_stride` set to what resolves now.

    Call it before saving a model dir, so the dir keeps its CAM layer if DEFAULT_TARGET_STRIDE or
    timm's stage lists change later. Returns a new ModelCard; the model is not changed.
    """
    import dataclasses

    if not is_drray_model(model):
        raise ValueError(f"pin_target_layer needs a drray model (with .backbone and .card), got {type(model).__name__}")
    targets = resolve_target_layers(model, name, stride=stride)
    inner = fused_name([inside_backbone(t.name) for t in targets])
    return dataclasses.replace(model.card, cam_target_layer=inner, cam_target_stride=targets[0].stride)


def inside_backbone(name: str) -> str:
    """A drray model's layer name as its card keeps it: without the `backbone.` prefix."""
    return name[len("backbone."):] if name.startswith("backbone.") else name


def module_name(model: nn.Module, layer: nn.Module) -> str:
    """Dotted name of `layer` inside `model`, or a ValueError when it is not one of its modules."""
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"the target layer {type(layer).__name__} is not a submodule of {type(model).__name__}")
