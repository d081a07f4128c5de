"""Reading photographs and masks from disk into uint8 RGB arrays, with stable failure reasons.

Every reader of image files (ingest, the Ray Data decode tasks, serving) goes through here, so a
file is judged the same way everywhere: grayscale, RGBA, 16-bit and palette images are converted
and kept; missing, empty, truncated, corrupt, non-image and oversized files raise `ImageError`
with a reason code from `drray.schema.Reason`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from drray.schema import Reason

DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(Exception):
    """An image that cannot be used; `reason` is a stable code for the errors table."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _open(data: bytes, where: str, max_pixels: int) -> Image.Image:
    if len(data) == 0:
        raise ImageError(Reason.EMPTY_FILE, f"{where} is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(Reason.NOT_AN_IMAGE, f"{where} is not a recognised image format") from None
    except Exception as e:  # PIL raises many types on garbage headers
        raise ImageError(Reason.CORRUPT_IMAGE, f"{where}: {type(e).__name__}: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(
            Reason.IMAGE_TOO_LARGE,
            f"{where} is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
            "(raise data.max_image_pixels if the file is trusted)",
        )
    return img


def _load(img: Image.Image, where: str) -> Image.Image:
    # PIL's own bomb check is global state; ours (above) is per call, so silence PIL's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img.load()
        except OSError as e:
            msg = str(e)
            reason = Reason.TRUNCATED_IMAGE if "truncat" in msg.lower() or "broken data stream" in msg.lower() else Reason.CORRUPT_IMAGE
            raise ImageError(reason, f"{where}: {msg}") from None
        except Exception as e:
            raise ImageError(Reason.CORRUPT_IMAGE, f"{where}: {type(e).__name__}: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = old
    return img


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8. 16-bit is scaled by its own range, alpha is dropped on black."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = a.max()
        scale = 65535.0 if hi > 255 and mode.startswith("I;16") else (hi if hi > 255 else 255.0)
        a = np.clip(a / max(scale, 1.0) * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"))
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def decode_rgb(data: bytes, where: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8, or `ImageError`."""
    img = _open(data, where, max_pixels)
    return to_rgb_array(_load(img, where))


def read_bytes(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise ImageError(Reason.MISSING_FILE, f"{str(p)!r} does not exist")
    return p.read_bytes()


def read_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file -> (H, W, 3) uint8, or `ImageError` with the reason."""
    return decode_rgb(read_bytes(path), str(path), max_pixels)


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A lesion mask file -> (H, W) bool (any non-zero pixel in any channel is lesion).

    `shape` (H, W) resizes with nearest neighbour, for masks saved at another resolution.
    """
    try:
        img = _load(_open(read_bytes(path), str(path), DEFAULT_MAX_PIXELS), str(path))
    except ImageError as e:
        if e.reason == Reason.MISSING_FILE:
            raise ImageError(Reason.MASK_MISSING, e.detail) from None
        raise ImageError(Reason.MASK_UNREADABLE, e.detail) from None
    if shape is not None and img.size != (shape[1], shape[0]):
        img = img.resize((shape[1], shape[0]), Image.NEAREST)
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[..., :3].max(axis=2) if a.shape[2] >= 3 else a[..., 0]
    return a > 0


def probe(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Fully decode a file to prove it usable; returns (width, height) or raises `ImageError`."""
    img = _open(read_bytes(path), str(path), max_pixels)
    _load(img, str(path))
    return img.size
