"""Model-randomisation sanity check for CAMs (Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains the model must change when the model's learned weights are destroyed. The
cascading check re-initialises the network from the top down, one block at a time (the head,
then the last stage, then the one before, ...) and compares each copy's maps with the trained
model's (drray.scores.localisation.rank_correlation); maps that barely change with the weights
show the image, not what the model learned. With every block re-initialised the copy is a
random-weights model, whose pointing-game score should sit at chance.

    blocks = cascade_blocks(model)                   # [("head", [...]), ("layer4", [...]), ..., ("act1", [...])]
    for label, copy in randomised_copies(model, [1, 2, len(blocks)]):
        CamEngine(copy, method="gradcam")(batch)     # same layer names as the trained model

Blocks are timm's stages (`feature_info` modules) where the model lists them, else its top-level
children. Parameters that belong to no stage join the stage that follows them in registration
order (the stem joins the first stage); those after the last stage are the head. Re-initialisation
calls each module's own `reset_parameters` (PyTorch's default init; norm layers back to 1/0 with
fresh running statistics); parameters of modules without one (layer-scale gammas, class tokens,
position embeddings) are drawn from a truncated normal of std 0.02, timm's usual init for them.
The trained model is never modified: each copy is a deep copy.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from drray.cam.target_layers import is_drray_model

_LEFTOVER_STD = 0.02


def _stage_names(net: nn.Module) -> list[str]:
    """timm's stage modules, in order; the top-level children but the last (the head) when it lists none."""
    info = getattr(net, "feature_info", None)
    if hasattr(info, "get_dicts"):
        info = info.get_dicts()
    modules = dict(net.named_modules())
    names: list[str] = []
    for entry in info if isinstance(info, (list, tuple)) else []:
        name = entry.get("module") if isinstance(entry, dict) else None
        if name in modules and name not in names:
            names.append(name)
    return names or [n for n, _ in net.named_children()][:-1]


def cascade_blocks(model: nn.Module) -> list[tuple[str, list[str]]]:
    """(label, parameter names) of each block, top down: "head", then each stage from the last.

    A stage's block holds its own parameters and those registered since the previous stage that
    belong to none: the stem joins the first stage (ResNet's `act1`), and a parameter-free stage
    (ByobNet's identity `final_conv`) takes the parameters of the stage it stands for.
    For a drray model the blocks are its backbone's, named as in `model.named_parameters()`.
    """
    net, prefix = (model.backbone, "backbone.") if is_drray_model(model) else (model, "")
    stages = _stage_names(net)
    groups: dict[str, list[str]] = {s: [] for s in stages}
    pending: list[str] = []  # parameters in no stage, waiting for the stage that follows them
    for mname, module in net.named_modules():  # registration order: a parent before its children
        if mname in groups:
            groups[mname].extend(pending)
            pending = []
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            owner = max((s for s in stages if full.startswith(s + ".")), key=len, default=None)
            (groups[owner] if owner is not None else pending).append(prefix + full)
    blocks = [("head", pending)] + [(s, groups[s]) for s in reversed(stages)]
    return [(label, names) for label, names in blocks if names]


def _reinitialise(model: nn.Module, params: set[str], generator_seed: int) -> None:
    """Reset every module whose own parameters are all in `params`; draw the rest from N(0, 0.02) truncated."""
    done: set[str] = set()
    # reset_parameters draws from the global RNG: a forked, seeded one keeps copies reproducible
    # and leaves the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(generator_seed)
        for mname, module in model.named_modules():
            own = [f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=False)]
            if not own or not all(p in params for p in own):
                continue
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                done.update(own)
        for pname, p in model.named_parameters():
            if pname in params and pname not in done:
                nn.init.trunc_normal_(p, std=_LEFTOVER_STD, a=-2 * _LEFTOVER_STD, b=2 * _LEFTOVER_STD)


def randomised_copy(model: nn.Module, steps: int, seed: int = 0) -> nn.Module:
    """A deep copy of `model` (eval mode) with its top `steps` cascade blocks re-initialised."""
    blocks = cascade_blocks(model)
    if not 0 <= steps <= len(blocks):
        raise ValueError(f"{type(model).__name__} has {len(blocks)} cascade blocks "
                         f"({', '.join(label for label, _ in blocks)}); steps must be 0-{len(blocks)}, got {steps}")
    params = {p for _, names in blocks[:steps] for p in names}
    clone = copy.deepcopy(model)
    _reinitialise(clone, params, seed)
    return clone.eval()


def randomised_copies(model: nn.Module, cascade_steps: int | Iterable[int] | None = None,
                      seed: int = 0) -> list[tuple[str, nn.Module]]:
    """[(label of the deepest block re-initialised, copy)] for each number of steps, top down.

    cascade_steps: a count k (steps 1..k), a list of step counts, or None for every step down to
    the first stage (the last copy is then a random-weights model). Labels read "head", "layer4", ...
    """
    blocks = cascade_blocks(model)
    if cascade_steps is None:
        steps = list(range(1, len(blocks) + 1))
    elif isinstance(cascade_steps, int):
        steps = list(range(1, cascade_steps + 1))
    else:
        steps = [int(s) for s in cascade_steps]
    if any(s < 1 for s in steps):
        raise ValueError(f"cascade steps count blocks re-initialised from the top and start at 1, got {steps}")
    return [(blocks[s - 1][0] if s <= len(blocks) else f"step {s}", randomised_copy(model, s, seed)) for s in steps]
