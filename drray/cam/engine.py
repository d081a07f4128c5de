"""CamEngine: grade probabilities and CAMs for a batch from one forward pass.

    with CamEngine(model, method="gradcam") as engine:
        out = engine(batch)            # batch: (B, 3, H, W) float, already preprocessed
        out["probs"], out["cams"]      # (B, 5) rows sum to 1; (B, H, W) in [0, 1]

The fast path (CAM_METHODS[...].fast) costs about one forward pass: the forward that yields the
predictions also yields the target layer's activations, and gradients flow only from the target
scores down to that layer. For the pass the parameters stop requiring gradients and a forward
hook hands the layers above a fresh leaf copy of the activations, so autograd records nothing
below the target layer and computes no parameter gradients; both are restored afterwards. The
maps are computed in float32 on the model's device (also from bf16 autocast activations),
normalised per image and upsampled in one batched interpolation. On the CPU the batch is made
channels-last first (no copy when it already is, as drray's predictor makes it).

A fused target (`target_layer="layer2+layer3"`, drray.cam.target_layers) captures every named
layer in that same forward and backward pass and multiplies their maps on the finest layer's grid
(drray.cam.maps.fuse_on_finest_grid) before the one upsampling to the output size: no extra pass,
so the cost is that of its lowest layer alone.

Zoo methods run through pytorch-grad-cam (drray.cam.zoo) after that same forward, which still
supplies the predictions and the grades to explain; they use the finest layer of a fused target.

Hooks live only during a call and are removed in a `finally`; an engine is not thread-safe
(it toggles the model's parameters and train/eval state for the duration of a call).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from drray.cam.maps import fuse_on_finest_grid, normalise_maps, upsample_maps
from drray.cam.methods import CamMethod, get_method
from drray.cam.targets import RowTarget, Target, parse_target, probs_and_preds, target_scores
from drray.cam.zoo import run_zoo_method
from drray.cam.target_layers import fused_name, module_name, resolve_target_layers


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and parameters not requiring gradients, for the duration; every flag restored after.

    Runs around every batch, so only what differs is restored: the modules that were training
    (a model may keep some parts in eval; they stay so) and the parameters that required gradients.
    """
    training = [m for m in model.modules() if m.training]
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        if training:
            model.eval()
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
        for m in training:
            m.training = True


class CamEngine:
    """Predictions and CAMs for batches of preprocessed images (see the module docstring).

    model: a drray model (`grade_probs`, `predict`, `head`) or any module whose outputs are
        classification logits (softmax for probabilities, argmax for the prediction).
    method: a name from CAM_METHODS (case, '-' and '_' ignored).
    target_layer: a module of `model`, its dotted name, several names joined by "+" (a fused target:
        the layers' maps multiplied), or None to choose it by stride.
    target_stride: output stride of the layer when target_layer is None: 8, 16 or 32, or None for
        a drray model card's layer or stride, else the default: strides 8 and 16 fused where the
        model has both (drray.cam.target_layers.DEFAULT_FUSED_STRIDES), else stride 8.
        A named layer wins over a stride; a stride the model lacks is a ValueError (see
        drray.cam.target_layers for transformers, which have one token grid).
    target: what the maps explain by default (drray.cam.targets): "pred", a grade 0-4,
        "referable" or "score".
    reshape_transform: turns the layer's output into (B, C, h, w); default: the family's
        (transformer tokens, channels-last stages), None for CNNs.
    device: where the model runs; the model is moved there. Default: where its parameters are.
    autocast_dtype: e.g. torch.bfloat16: the forward pass runs under torch.autocast on the
        device; maps are still computed in float32. Zoo methods always run in full precision.
    """

    def __init__(self, model: nn.Module, method: str = "gradcam",
                 target_layer: nn.Module | str | None = None, target_stride: int | None = None,
                 target: Any = "pred",
                 reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: str | torch.device | None = None, autocast_dtype: torch.dtype | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"CamEngine needs a torch nn.Module, got {type(model).__name__}")
        self.model = model
        self._method = get_method(method)
        self.device = _model_device(model) if device is None else torch.device(device)
        if device is not None and _model_device(model) != self.device:
            model.to(self.device)
        if isinstance(target_layer, nn.Module):
            target_layer = module_name(model, target_layer)
        elif target_layer is not None and not isinstance(target_layer, str):
            raise TypeError(f"target_layer must be a module, a dotted name or None, got {type(target_layer).__name__}")
        resolved = resolve_target_layers(model, target_layer, stride=target_stride)
        self.target_layers: list[nn.Module] = [r.layer for r in resolved]
        """Every layer the maps use: one, or several for a fused target (finest first)."""
        self.target_layer: nn.Module = resolved[0].layer
        self.target_layer_name: str = fused_name([r.name for r in resolved])
        self.target_stride: int | None = resolved[0].stride
        """Output stride of the (finest) target layer's map (8: a 32 x 32 map at 256 px); None when not known."""
        self._reshapes = [reshape_transform if reshape_transform is not None else r.reshape for r in resolved]
        self.reshape_transform = self._reshapes[0]
        self.target: Target = parse_target(target)
        self.autocast_dtype = autocast_dtype
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def method(self) -> str:
        return self._method.name

    def __repr__(self) -> str:
        return (f"CamEngine(model={type(self.model).__name__}, method={self.method!r}, "
                f"target_layer={self.target_layer_name!r}, target_stride={self.target_stride}, target={self.target}, "
                f"device={self.device})")

    def __enter__(self) -> "CamEngine":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def close(self) -> None:
        """Remove any hook still on the model (a call interrupted mid-way); the engine stays usable."""
        while self._handles:
            self._handles.pop().remove()

    def __call__(self, batch: torch.Tensor, target: Any = None, output_size: tuple[int, int] | None = None,
                 methods: Sequence[str] | None = None) -> dict[str, Any]:
        """Predictions and maps for a (B, 3, H, W) batch, all on the CPU.

        target: overrides the engine's target for this call. output_size: (h, w) of the maps,
        default the batch's H, W. methods: several CAM methods at once (fast ones share one
        forward and backward pass); default the engine's method.

        Returns "logits" (B, K) raw outputs, "probs" (B, 5), "preds" (B,) long, "targets" (B,)
        long (the grade explained, -1 for score-like targets), "cams" (B, h, w) float32 in
        [0, 1] of the first method, "cams_by_method" {method: (B, h, w)}.
        """
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[0] == 0:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"CamEngine takes a non-empty (B, C, H, W) image tensor, got {shape}")
        if not batch.is_floating_point():
            raise ValueError(f"CamEngine takes a preprocessed float batch, got {batch.dtype}; "
                             "turn uint8 images into network input with model.normalize or model.preprocess")
        chosen = [self._method] if methods is None else [get_method(m) for m in methods]
        if not chosen:
            raise ValueError("methods is empty; name at least one CAM method")
        tgt = self.target if target is None else parse_target(target)
        size = tuple(batch.shape[-2:]) if output_size is None else tuple(int(s) for s in output_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"output_size must be (height, width) in pixels, got {output_size!r}")
        batch = batch.to(device=self.device, dtype=_float_dtype(self.model), non_blocking=True)
        if self.device.type == "cpu":
            # oneDNN runs ResNet and EfficientNet 1.2-1.5x faster channels-last on the CPU (benchmarks/
            # README.md, CAM throughput); drray's predictor already feeds such batches, direct callers may not.
            batch = batch.contiguous(memory_format=torch.channels_last)

        fast = [m for m in chosen if m.fast]
        with frozen_eval(self.model):
            outputs, probs, preds, grades, acts, grads = self._forward(
                batch, tgt, capture=bool(fast), with_grads=any(m.uses_gradients for m in fast))
        maps: dict[str, torch.Tensor] = {}
        for m in fast:
            layer_maps = [normalise_maps(m.formula(a, g))
                          for a, g in zip(acts, grads if grads is not None else [None] * len(acts))]
            maps[m.name] = upsample_maps(fuse_on_finest_grid(layer_maps), size).cpu()
        for m in chosen:
            if not m.fast:
                maps[m.name] = upsample_maps(self._zoo(m, batch, tgt, grades), size)
        return {
            "logits": outputs.cpu(),
            "probs": probs.cpu(),
            "preds": preds.cpu(),
            "targets": grades.cpu(),
            "cams": maps[chosen[0].name],
            "cams_by_method": maps,
        }

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @staticmethod
    def _grad_mode(with_grads: bool) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if with_grads:
            # Callers may wrap us in inference mode; gradients are needed above the target layer.
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
        else:
            stack.enter_context(torch.no_grad())
        return stack

    def _forward(self, batch: torch.Tensor, target: Target, capture: bool, with_grads: bool):
        """One forward (and, for gradient methods, one backward down to the lowest target layer only)."""
        store: dict[int, torch.Tensor] = {}

        def hook_for(k: int):
            def hook(_module, _inputs, output):
                if not isinstance(output, torch.Tensor):
                    raise TypeError(f"target layer {self.target_layer_name!r} returns {type(output).__name__}, "
                                    "not a tensor; choose a layer whose output is a feature map")
                if store:  # a fused target's upper layer: in the graph above the first one
                    store[k] = output
                    return output.clone()
                # The first target layer to run: autograd starts here, so nothing below it is recorded.
                leaf = output.detach()
                if with_grads:
                    leaf.requires_grad_()
                store[k] = leaf
                # The layers above get a copy: an in-place op there (x += shortcut) must not touch the
                # stored activations, nor a leaf that requires grad (autograd forbids it).
                return leaf.clone()

            return hook

        handles = [layer.register_forward_hook(hook_for(k)) for k, layer in enumerate(self.target_layers)] \
            if capture else []
        self._handles.extend(handles)
        try:
            with self._grad_mode(with_grads):
                with self._autocast():
                    raw = self.model(batch)
                if not isinstance(raw, torch.Tensor) or raw.ndim != 2:
                    raise ValueError(f"the model must return (B, K) outputs, got "
                                     f"{tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__}")
                outputs = raw.float()
                probs, preds = probs_and_preds(self.model, outputs)
                scores, grades = target_scores(self.model, outputs, probs, preds, target)
                if capture and len(store) < len(self.target_layers):
                    raise RuntimeError(f"target layer {self.target_layer_name!r} did not run in the forward pass")
                captured = [store[k] for k in range(len(self.target_layers))] if capture else []
                grads = self._gradients(scores, captured) if with_grads else None
        finally:
            for handle in handles:
                handle.remove()
                self._handles.remove(handle)
        acts = [self._as_map(a, k) for k, a in enumerate(captured)] if capture else None
        grads = [self._as_map(g, k) for k, g in enumerate(grads)] if grads is not None else None
        return outputs.detach(), probs.detach().float(), preds, grades, acts, grads

    def _gradients(self, scores: torch.Tensor, acts: list[torch.Tensor]) -> list[torch.Tensor]:
        if not scores.requires_grad:
            raise RuntimeError(f"the target scores do not depend on layer {self.target_layer_name!r}; "
                               "choose a layer on the path to the model's outputs")
        # Images are independent (eval mode), so the gradient of the batch sum is each image's own.
        # A fused target's layers share this one backward pass: the upper ones lie on its way down.
        grads = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
        if any(g is None for g in grads):
            raise RuntimeError(f"the target scores do not depend on every layer of {self.target_layer_name!r}; "
                               "fused layers must lie one above the other on the path to the outputs")
        return list(grads)

    def _as_map(self, x: torch.Tensor, k: int = 0) -> torch.Tensor:
        """Target layer k's output (or its gradient) as a float32 (B, C, h, w) map."""
        reshape = self._reshapes[k]
        if reshape is not None:
            x = reshape(x)
        if x.ndim != 4:
            raise ValueError(f"target layer {self.target_layer_name!r} gives {tuple(x.shape)} activations, not "
                             "(B, C, h, w); pass a reshape_transform (drray.cam.target_layers has the common ones)")
        return x.detach().float()

    def _zoo(self, method: CamMethod, batch: torch.Tensor, target: Target, grades: torch.Tensor) -> torch.Tensor:
        row_targets = [RowTarget(self.model, target, int(g)) for g in grades.tolist()]
        # pytorch-grad-cam back-propagates, also into the input: no inference-mode tensors there.
        with torch.inference_mode(False), frozen_eval(self.model):
            return run_zoo_method(method, self.model, self.target_layer, self.reshape_transform,
                                  batch.clone(), row_targets)
