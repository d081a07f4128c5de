"""`CAM_METHODS`: every CAM method drray knows, one record per name, with its formula where it has one.

Fast methods run on drray's batched torch path (drray.cam.engine): one forward gives predictions
and the target layer's activations, gradients flow only from the target score down to that layer,
and the method's formula below turns (B, C, h, w) activations and gradients into (B, h, w) maps.
Zoo methods run through pytorch-grad-cam itself (drray.cam.zoo): slower (most need many forward
passes or gradients of every parameter), kept for comparison and for methods without a closed
form over one layer's activations.

Each formula follows pytorch-grad-cam 1.5.7's numpy implementation of the same method, so a map
here matches the library's map for the same model, layer and target (tests/test_cam.py checks it),
with one deliberate difference: EigenCAM's sign. An SVD leaves the sign of the first component
arbitrary (the library's map can flip between LAPACK builds); here it is fixed so the component
points along the summed activation, which makes maps reproducible across machines and devices.
Formulas are pure functions on tensors, on whatever device the tensors live, called in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

CamFormula = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

# Same epsilons as pytorch-grad-cam, so near-zero denominators behave alike.
_EPS_PLUSPLUS = 1e-6
_EPS_XGRAD = 1e-7


@dataclass(frozen=True)
class CamMethod:
    """One entry of CAM_METHODS."""

    name: str
    pgc_class: str
    """The pytorch-grad-cam class of the same method (the reference for fast methods)."""
    summary: str
    uses_gradients: bool
    """Needs gradients of the target score with respect to the target layer (or, zoo, every parameter)."""
    formula: CamFormula | None = None
    """(activations, gradients) -> maps on drray's fast path; None runs the method through pytorch-grad-cam."""

    @property
    def fast(self) -> bool:
        """True: drray's batched torch path; False: pytorch-grad-cam (the zoo)."""
        return self.formula is not None


CAM_METHODS: dict[str, CamMethod] = {}


def _register(method: CamMethod) -> None:
    if method.name in CAM_METHODS:
        raise ValueError(f"CAM method {method.name!r} is registered twice")
    CAM_METHODS[method.name] = method


def fast_method(name: str, pgc_class: str, summary: str, uses_gradients: bool = True):
    """Decorator: register a formula as the fast-path CAM method `name`."""

    def register(formula: CamFormula) -> CamFormula:
        _register(CamMethod(name, pgc_class, summary, uses_gradients, formula))
        return formula

    return register


def _weighted_sum(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """sum_c w[b, c] * A[b, c, :, :] -> (B, h, w)."""
    return torch.einsum("bc,bchw->bhw", weights, acts)


@fast_method("gradcam", "GradCAM", "Grad-CAM: channels weighted by their mean gradient")
def gradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of the gradients."""
    return _weighted_sum(grads.mean(dim=(2, 3)), acts)


@fast_method("gradcam++", "GradCAMPlusPlus", "Grad-CAM++: positive gradients with second-order weights")
def gradcam_plusplus(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential-score closed form)."""
    grads2 = grads.pow(2)
    grads3 = grads2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    alpha = grads2 / (2 * grads2 + sum_acts * grads3 + _EPS_PLUSPLUS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (grads.clamp_min(0) * alpha).sum(dim=(2, 3))
    return _weighted_sum(weights, acts)


@fast_method("xgradcam", "XGradCAM", "XGrad-CAM: gradients weighted by normalised activations")
def xgradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): gradients weighted by the normalised activations."""
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    weights = (grads * acts / (sum_acts + _EPS_XGRAD)).sum(dim=(2, 3))
    return _weighted_sum(weights, acts)


@fast_method("hirescam", "HiResCAM", "HiResCAM: element-wise gradient x activation")
def hirescam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin 2020): element-wise gradient x activation, summed over channels."""
    return (grads * acts).sum(dim=1)


@fast_method("gradcamelementwise", "GradCAMElementWise", "element-wise ReLU(gradient x activation)")
def gradcam_elementwise(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Like HiResCAM with a ReLU on each element before the channel sum."""
    return (grads * acts).clamp_min(0).sum(dim=1)


@fast_method("layercam", "LayerCAM", "LayerCAM: positive gradients weight each activation")
def layercam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): positive gradients weight each activation."""
    return (grads.clamp_min(0) * acts).sum(dim=1)


def first_component_projection(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): each position's projection on the first principal component over channels.

    As pytorch-grad-cam's get_2d_projection: positions are samples, channels are features, centred
    per channel. Computed from the smaller of the two Gram matrices with a batched eigh instead of
    one SVD per image (X v1 = u1 * s1). The sign is fixed so the component points along the sum
    over channels (see the module docstring).
    """
    b, c, h, w = maps.shape
    x = torch.nan_to_num(maps.reshape(b, c, h * w).transpose(1, 2))  # (B, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    if h * w <= c:
        evals, evecs = torch.linalg.eigh(x @ x.transpose(1, 2))
        proj = evecs[..., -1] * evals[..., -1:].clamp_min(0).sqrt()
    else:
        _, evecs = torch.linalg.eigh(x.transpose(1, 2) @ x)
        proj = x @ evecs[..., -1:]
        proj = proj[..., 0]
    sign = torch.sign((proj * x.sum(dim=2)).sum(dim=1, keepdim=True))
    proj = proj * torch.where(sign == 0, torch.ones_like(sign), sign)
    return proj.reshape(b, h, w)


@fast_method("eigencam", "EigenCAM", "EigenCAM: first principal component of the activations",
             uses_gradients=False)
def eigencam(acts: torch.Tensor, grads: torch.Tensor | None = None) -> torch.Tensor:
    """EigenCAM (Muhammad & Yeasin 2020): first principal component of the activations; no gradients."""
    return first_component_projection(acts)


@fast_method("eigengradcam", "EigenGradCAM", "first principal component of gradient x activation")
def eigengradcam(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """EigenGradCAM: first principal component of gradient x activation."""
    return first_component_projection(grads * acts)


# pytorch-grad-cam methods without a one-layer closed form: (name, class, summary, uses gradients).
for _name, _cls, _summary, _grads in (
    ("scorecam", "ScoreCAM", "Score-CAM: one forward pass per channel of the target layer", False),
    ("ablationcam", "AblationCAM", "Ablation-CAM: score drop when each channel is zeroed", False),
    ("fullgrad", "FullGrad", "FullGrad: bias gradients of every conv/BN layer plus input gradients", True),
    ("shapleycam", "ShapleyCAM", "ShapleyCAM: gradient and Hessian-vector product", True),
    ("kpcacam", "KPCA_CAM", "KPCA-CAM: kernel PCA of the activations", False),
    ("fem", "FEM", "FEM: channels above mean + k std", False),
    ("randomcam", "RandomCAM", "random channel weights: a sanity-check baseline", True),
):
    _register(CamMethod(_name, _cls, _summary, _grads))

# Spellings users type (URLs, forms, YAML): case, '-', '_' and spaces are ignored.
_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "kpca": "kpcacam"}


def get_method(name: str) -> CamMethod:
    """The CamMethod called `name` (case, '-', '_' and spaces ignored), or a ValueError listing them all."""
    if not isinstance(name, str):
        raise ValueError(f"a CAM method is named by a string, got {name!r}")
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {name!r}; choose one of: {', '.join(CAM_METHODS)}")
    return CAM_METHODS[key]
