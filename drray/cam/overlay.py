"""Overlay thumbnails: an explanation map in a jet colormap blended on the photograph, as PNG bytes."""

from __future__ import annotations

import cv2
import numpy as np


def colorize(cam: np.ndarray) -> np.ndarray:
    """Map in [0, 1] (H, W) -> (H, W, 3) uint8 RGB in OpenCV's jet colormap (blue low, red high)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"a map must be (H, W), got shape {cam.shape}")
    u8 = np.round(np.clip(np.nan_to_num(cam), 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def blend(image: np.ndarray, cam: np.ndarray, size: int | None = None, alpha: float = 0.4) -> np.ndarray:
    """Jet-coloured map over an (H, W, 3) uint8 RGB image; both resized to `size` px (None: image size).

    alpha: weight of the colour map (0 shows only the image, 1 only the map).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {image.shape} dtype {image.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = (size, size) if size else image.shape[:2]
    if image.shape[:2] != (h, w):
        interp = cv2.INTER_AREA if image.shape[0] > h else cv2.INTER_LINEAR
        image = cv2.resize(image, (w, h), interpolation=interp)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != (h, w):
        cam = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(colorize(cam), alpha, image, 1.0 - alpha, 0.0)


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} {rgb.dtype} array as PNG")
    return buf.tobytes()


def overlay_png(image: np.ndarray, cam: np.ndarray, size: int | None = None, alpha: float = 0.4) -> bytes:
    """PNG thumbnail of `blend(image, cam, size, alpha)`."""
    return encode_png(blend(image, cam, size, alpha))

