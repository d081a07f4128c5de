"""CAM engine: a fast batched torch path plus the pytorch-grad-cam method zoo.

    from drray.cam import CamEngine, CAM_METHODS
"""

from drray.cam.engine import CamEngine, frozen_eval
from drray.cam.registry import CAM_METHODS, CamMethod, get_method
from drray.cam.targets import TARGET_NAMES, Target, parse_target

__all__ = ["CAM_METHODS", "CamEngine", "CamMethod", "TARGET_NAMES", "Target", "frozen_eval", "get_method",
           "parse_target"]
