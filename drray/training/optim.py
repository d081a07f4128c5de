"""The optimiser of a training run: AdamW over the whole model, with layer-wise lr decay, or over the head alone.

    optimizer = make_optimizer(model, cfg.train)

How foundation backbones are fine-tuned and compared:
- `train.layer_decay` (e.g. 0.65, as RETFound fine-tunes; BEiT, MAE): each block's learning rate is
  the one above it times the factor, the head's the full rate (timm's `param_groups_layer_decay`,
  by the backbone's `group_matcher`); norms and biases get no weight decay. The scale sits in each
  group's `lr_scale`, which `train_step` multiplies the scheduled rate by.
- `train.linear_probe`: the backbone is frozen and only its classifier learns (the linear-probing
  protocol foundation models are compared by). Frozen tensors keep requires_grad False, so DDP and
  the optimiser skip them.
"""

from __future__ import annotations

from typing import Any


def classifier_parameters(model: Any) -> list[tuple[str, Any]]:
    """(name, parameter) of the backbone's classifier (timm's pretrained_cfg["classifier"])."""
    from drray.models.model import classifier_names

    heads = tuple(f"{c}." for c in classifier_names(model.backbone))
    found = [(n, p) for n, p in model.backbone.named_parameters() if n.startswith(heads)]
    if not found:
        raise ValueError(f"train.linear_probe: {model.card.timm_name} names no classifier module "
                         f"(pretrained_cfg['classifier'] = {classifier_names(model.backbone)!r}); nothing would learn")
    return found


def make_optimizer(model: Any, t: Any):
    """AdamW for `model` (a DRModel) under TrainConfig `t` (see the module docstring)."""
    import torch

    if t.linear_probe:
        keep = {id(p) for _, p in classifier_parameters(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        if not hasattr(model.backbone, "group_matcher"):
            raise ValueError(f"train.layer_decay: timm's {model.card.timm_name} has no group_matcher to tell its "
                             "layers apart; leave train.layer_decay null for it")
        groups = param_groups_layer_decay(model.backbone, weight_decay=t.weight_decay, layer_decay=t.layer_decay)
        return torch.optim.AdamW(groups, lr=t.lr)
    return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
