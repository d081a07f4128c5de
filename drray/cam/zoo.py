"""Run a pytorch-grad-cam method ("zoo" methods of CAM_METHODS) on a batch, leaving the model as it was.

pytorch-grad-cam hooks the model when a CAM object is built; the hooks are released here in a
`finally` (its own `__exit__` would also swallow IndexErrors), so an engine living for days in a
Ray actor does not pile up hooks or activations. Gradient methods back-propagate into every
parameter: parameters are made trainable for the call and their `requires_grad` and `.grad`
restored afterwards. AblationCAM swaps the target layer for an ablation layer and is put back
even when the call fails.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from drray.cam.methods import CamMethod

ZOO_BATCH_SIZE = 32
"""Perturbed copies per forward pass in ScoreCAM and AblationCAM."""


def _build(method: CamMethod, model: nn.Module, layer: nn.Module, reshape: Callable | None):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit

    cls = getattr(pgc, method.pgc_class)
    if method.name == "fullgrad":
        return cls(model, [], None)  # FullGrad uses every biased conv/BN layer, never a target layer
    if method.name == "ablationcam":
        # A fresh ablation layer each time: the library's default argument is one shared instance.
        # Channels-last activations (tokens, NHWC) need the transformer variant.
        ablation = AblationLayerVit() if reshape is not None else AblationLayer()
        return cls(model, [layer], reshape, ablation_layer=ablation, batch_size=ZOO_BATCH_SIZE)
    cam = cls(model, [layer], reshape)
    if method.name == "scorecam":
        cam.batch_size = ZOO_BATCH_SIZE  # ScoreCAM reads this attribute when present
    return cam


def run_zoo_method(method: CamMethod, model: nn.Module, layer: nn.Module, reshape: Callable | None,
                   batch: torch.Tensor, row_targets: Sequence[Callable]) -> torch.Tensor:
    """(B, H, W) float32 maps in [0, 1] at the batch's size, on the CPU, from pytorch-grad-cam."""
    from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    saved_grads = [p.grad for p in params]
    cam = None
    try:
        if method.uses_gradients:
            for p in params:
                p.requires_grad_(True)
        cam = _build(method, model, layer, reshape)
        with torch.enable_grad():
            maps = cam(input_tensor=batch, targets=list(row_targets))
    finally:
        if cam is not None:
            hooks = cam.activations_and_grads
            # Drop the stored tensors first: the library's clear() detaches them in place, which fails
            # on gradient views (ShapleyCAM) and would hide the error that brought us here.
            hooks.activations, hooks.gradients = [], []
            hooks.release()
            ablation = getattr(cam, "ablation_layer", None)
            if ablation is not None:
                replace_layer_recursive(model, ablation, layer)  # no-op when already put back
        for p, flag, grad in zip(params, flags, saved_grads):
            p.requires_grad_(flag)
            p.grad = grad
    return torch.from_numpy(maps).float()
