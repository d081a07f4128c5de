"""CAM engine: a fast batched torch path plus the pytorch-grad-cam method zoo.

    from drray.cam import CamEngine, CAM_METHODS
    CamEngine(model, method="gradcam", target_stride=8)    # target layers by resolution
    randomised_copies(model)                               # the model-randomisation sanity check
"""

from drray.cam.engine import CamEngine, frozen_eval
from drray.cam.methods import CAM_METHODS, CamMethod, get_method
from drray.cam.sanity import cascade_blocks, randomised_copies, randomised_copy
from drray.cam.target_layers import CAM_STRIDES, DEFAULT_TARGET_STRIDE, TargetLayer, resolve_target_layer, stride_layers
from drray.cam.targets import TARGET_NAMES, Target, parse_target

__all__ = ["CAM_METHODS", "CAM_STRIDES", "CamEngine", "CamMethod", "DEFAULT_TARGET_STRIDE", "TARGET_NAMES", "Target",
           "TargetLayer", "cascade_blocks", "frozen_eval", "get_method", "parse_target", "randomised_copies",
           "randomised_copy", "resolve_target_layer", "stride_layers"]
