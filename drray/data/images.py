"""Reading photographs and masks from disk into uint8 RGB arrays, with stable failure reasons.

Every reader of image files (ingest, the Ray Data decode tasks, serving) goes through here, so a
file is judged the same way everywhere: grayscale, RGBA, 16-bit and palette images are converted
and kept; missing, empty, truncated, corrupt, non-image and oversized files raise `ImageError`
with a reason code from `drray.schema.Reason`.

Screening photographs are 3-12 Mpx JPEGs and networks read 192-512 px, so `read_photo` can
decode a JPEG at 1/2 or 1/4 scale (libjpeg's DCT scaling: the inverse transform of fewer
coefficients, several times cheaper than a full decode). The pixel limit always judges the size
stored in the file's header.
"""

from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from drray.schema import Reason

DEFAULT_MAX_PIXELS = 64_000_000
DRAFT_SCALES = (8, 4, 2)
"""Reductions libjpeg decodes at directly, largest first."""
MAX_SCALE = 4
"""Largest reduction `read_photo` uses for pixels that are kept. At 1/8 each pixel is the mean of
one 8x8 block, which blurs the fundus rim enough to move the fitted circle by up to 2 px of the
original, and it saves little over 1/4: entropy decoding, which no scaling skips, dominates."""
REDUCE_SCALE = 4
"""Other formats decode whole; a box average (Image.reduce) by this factor then pays for itself in
`prepare`: 1.16x images per CPU second on a 3216x2136 PNG -> 384 px (benchmarks/
preprocess_throughput.py). By 2 it did not (1.03x, within noise), so 1/2 is not used for them."""
_REDUCE_MODES = ("RGB", "L")  # modes whose pixels Image.reduce averages as they are


class ImageError(Exception):
    """An image that cannot be used; `reason` is a stable code for the errors table."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Photo:
    """A photograph decoded at 1/scale of the size stored in its file."""

    rgb: np.ndarray
    """(ceil(H / scale), ceil(W / scale), 3) uint8."""
    scale: int
    """1 (full resolution), 2 or 4."""
    shape: tuple[int, int]
    """(H, W) as stored in the file: what geometry, masks and the manifest refer to."""


_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextmanager
def _own_pixel_limit():
    """Switch off PIL's global decompression-bomb check while a file is opened and decoded.

    PIL refuses images above 2 x Image.MAX_IMAGE_PIXELS inside Image.open, before drray's own
    per-call `max_pixels` could give its reason (image_too_large) or let a trusted large file
    through. The global is shared by threads, so the first reader in switches it off and the
    last one out restores it.
    """
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


def _open(data: bytes, where: str, max_pixels: int) -> Image.Image:
    if len(data) == 0:
        raise ImageError(Reason.EMPTY_FILE, f"{where} is empty (0 bytes)")
    try:
        with _own_pixel_limit():
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
    with _own_pixel_limit():
        try:
            img.load()
        except OSError as e:
            msg = str(e)
            reason = Reason.TRUNCATED_IMAGE if "truncat" in msg.lower() or "broken data stream" in msg.lower() else Reason.CORRUPT_IMAGE
            raise ImageError(reason, f"{where}: {msg}") from None
        except Exception as e:
            raise ImageError(Reason.CORRUPT_IMAGE, f"{where}: {type(e).__name__}: {e}") from None
    return img


def draft_scale(shape: tuple[int, int], min_side: int | None, max_scale: int = MAX_SCALE) -> int:
    """The largest DCT reduction (up to max_scale, else 1) that keeps the shorter side of `shape` >= min_side."""
    if min_side is None:
        return 1
    short = min(int(shape[0]), int(shape[1]))
    return next((s for s in DRAFT_SCALES if s <= max_scale and short // s >= min_side), 1)


def _draft(img: Image.Image, min_side: int | None, max_scale: int = MAX_SCALE) -> int:
    """Ask a JPEG to decode at reduced scale; returns the scale it will decode at (1 for other formats)."""
    if img.format not in ("JPEG", "MPO"):
        return 1
    w, h = img.size
    scale = draft_scale((h, w), min_side, max_scale)
    if scale == 1:
        return 1
    # PIL picks the largest scaling that keeps the result >= the size asked for: this one.
    applied = img.draft("RGB", (w // scale, h // scale))
    if applied is None:  # a file PIL cannot scale (several tiles): full resolution
        return 1
    return round(w / applied[1][2])  # the box it returns is (0, 0, W / scale, H / scale)


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


def decode_photo(data: bytes, where: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_side: int | None = None) -> Photo:
    """Encoded bytes -> `Photo`, or `ImageError`.

    min_side: decode a JPEG at the largest reduction (1/2 or 1/4) whose shorter side keeps
        at least this many pixels; other formats are decoded whole and box-averaged by
        REDUCE_SCALE where that keeps min_side. None decodes at full resolution.
    """
    img = _open(data, where, max_pixels)
    w, h = img.size  # the stored size, before any draft shrinks it
    scale = _draft(img, min_side)
    img = _load(img, where)
    if scale == 1 and img.mode in _REDUCE_MODES and draft_scale((h, w), min_side) == REDUCE_SCALE:
        # Pixel j averages original pixels [j*4, (j+1)*4), as a DCT-scaled pixel does.
        img, scale = img.reduce(REDUCE_SCALE), REDUCE_SCALE
    return Photo(to_rgb_array(img), scale, (h, w))


def decode_rgb(data: bytes, where: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> (H, W, 3) uint8 at full resolution, or `ImageError`."""
    return decode_photo(data, where, max_pixels).rgb


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a local file or an object (s3://...), or `ImageError(missing_file)`."""
    from drray import storage

    if storage.is_uri(path):
        try:
            return storage.read_bytes(path)
        except FileNotFoundError:
            raise ImageError(Reason.MISSING_FILE, f"{str(path)!r} does not exist") from None
        except OSError as e:  # a bucket that is not there, credentials refused: the bytes cannot be read
            raise ImageError(Reason.MISSING_FILE, f"{str(path)!r} cannot be read: {e}") from None
    p = Path(path)
    if not p.is_file():
        raise ImageError(Reason.MISSING_FILE, f"{str(p)!r} does not exist")
    return p.read_bytes()


def read_photo(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> Photo:
    """A file -> `Photo` (see `decode_photo`), or `ImageError` with the reason."""
    return decode_photo(read_bytes(path), str(path), max_pixels, min_side)


def read_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file -> (H, W, 3) uint8 at full resolution, or `ImageError` with the reason."""
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
    """Decode a whole file to prove it usable; returns its stored (width, height) or raises `ImageError`.

    A JPEG is decoded at 1/8 scale: libjpeg still entropy-decodes every coefficient of every scan
    (only the inverse DCT shrinks), so a truncated file fails exactly as at full resolution
    (tests/test_images.py cuts files at many points to check), in a fraction of the time.
    """
    img = _open(read_bytes(path), str(path), max_pixels)
    size = img.size
    _draft(img, 1, max_scale=8)  # the pixels are thrown away: the cheapest scaling will do
    _load(img, str(path))
    return size
