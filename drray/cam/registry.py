"""`CAM_METHODS`: every CAM method drray knows, by name, and how the engine runs it.

Fast methods run on drray's batched torch path (one forward gives predictions and maps, gradients
flow only from the target score down to the target layer). Zoo methods run through
pytorch-grad-cam itself: slower (most need many forward passes or gradients of every parameter),
kept for comparison and for methods without a closed form over one layer's activations.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CamMethod:
    """One entry of CAM_METHODS."""

    name: str
    fast: bool
    """True: drray's batched torch path (drray.cam.fast_methods); False: pytorch-grad-cam."""
    uses_gradients: bool
    """Needs gradients of the target score with respect to the target layer."""
    pgc_class: str
    """The pytorch-grad-cam class of the same method (the reference for fast methods)."""
    summary: str


def _entries() -> list[CamMethod]:
    fast = [
        ("gradcam", True, "GradCAM", "Grad-CAM: channels weighted by their mean gradient"),
        ("gradcam++", True, "GradCAMPlusPlus", "Grad-CAM++: positive gradients with second-order weights"),
        ("xgradcam", True, "XGradCAM", "XGrad-CAM: gradients weighted by normalised activations"),
        ("hirescam", True, "HiResCAM", "HiResCAM: element-wise gradient x activation"),
        ("gradcamelementwise", True, "GradCAMElementWise", "element-wise ReLU(gradient x activation)"),
        ("layercam", True, "LayerCAM", "LayerCAM: positive gradients weight each activation"),
        ("eigencam", False, "EigenCAM", "EigenCAM: first principal component of the activations"),
        ("eigengradcam", True, "EigenGradCAM", "first principal component of gradient x activation"),
    ]
    zoo = [
        ("scorecam", False, "ScoreCAM", "Score-CAM: one forward pass per channel of the target layer"),
        ("ablationcam", False, "AblationCAM", "Ablation-CAM: score drop when each channel is zeroed"),
        ("fullgrad", True, "FullGrad", "FullGrad: bias gradients of every conv/BN layer plus input gradients"),
        ("shapleycam", True, "ShapleyCAM", "ShapleyCAM: gradient and Hessian-vector product"),
        ("kpcacam", False, "KPCA_CAM", "KPCA-CAM: kernel PCA of the activations"),
        ("fem", False, "FEM", "FEM: channels above mean + k std"),
        ("randomcam", True, "RandomCAM", "random channel weights: a sanity-check baseline"),
    ]
    return ([CamMethod(n, True, g, c, s) for n, g, c, s in fast]
            + [CamMethod(n, False, g, c, s) for n, g, c, s in zoo])


CAM_METHODS: dict[str, CamMethod] = {m.name: m for m in _entries()}

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
