"""From reflectance to a camera image: illumination fall-off, flash haze, colour balance, exposure,
gamma, defocus blur, sensor noise, the circular field stop and the occasional cut-off field.

Each photograph draws its own settings, so brightness, colour cast and sharpness vary as across
fundus cameras and operators (the JPEG quality is drawn per patient visit in patient.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from drray.data.synth.anatomy import Geometry, smooth_noise


@dataclass(frozen=True)
class Camera:
    """One shot's photometric settings."""

    exposure: float
    gains: tuple[float, float, float]
    gamma: float
    blur_sigma: float
    """Gaussian defocus blur, pixels at the image's own size."""
    noise_sigma: float
    """Sensor noise, 8-bit levels."""


def sample_camera(rng: np.random.Generator, size: int, patient_gains: tuple[float, float, float]) -> Camera:
    """Per-shot settings around the visit's camera colour balance."""
    gains = tuple(float(g * rng.uniform(0.96, 1.04)) for g in patient_gains)
    exposure = rng.uniform(0.8, 1.2) if rng.random() > 0.08 else rng.uniform(0.45, 0.7)  # some shots underexposed
    scale = size / 512.0
    # Most shots are sharp; ~8% are out of focus (still gradable, as in screening archives).
    blur = rng.uniform(0.3, 1.0) if rng.random() > 0.08 else rng.uniform(1.4, 2.2)
    return Camera(
        exposure=float(exposure), gains=gains,  # type: ignore[arg-type]
        gamma=float(rng.uniform(0.85, 1.2)), blur_sigma=float(blur * scale),
        noise_sigma=float(rng.uniform(0.5, 2.5)),
    )


def illumination(rng: np.random.Generator, geo: Geometry) -> tuple[np.ndarray, np.ndarray | None]:
    """Light reaching each pixel (S,S) float32 including the field stop, and an optional additive haze (S,S,3)."""
    S = geo.size
    g = min(S, 64)
    scale = S / g
    ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
    X = ((xs + 0.5) * scale - 0.5 - geo.cx) / geo.r
    Y = ((ys + 0.5) * scale - 0.5 - geo.cy) / geo.r
    rho = np.sqrt(X**2 + Y**2)
    falloff = 1.0 - rng.uniform(0.25, 0.55) * np.minimum(rho, 1.2) ** rng.uniform(1.8, 3.0)
    phi = rng.uniform(0, 2 * np.pi)
    tilt = 1.0 + rng.uniform(0.0, 0.18) * (X * np.cos(phi) + Y * np.sin(phi))
    rim = 1.0 - rng.uniform(0.1, 0.35) * np.clip((rho - 0.8) / 0.2, 0.0, 1.0) ** 2
    light = falloff * tilt * rim * (1.0 + 0.05 * smooth_noise(rng, 4, g))
    light = cv2.resize(light.astype(np.float32), (S, S), interpolation=cv2.INTER_LINEAR)

    # The field stop, anti-aliased: the image is dark outside the circle (in place: one S x S buffer).
    yy, xx = np.ogrid[0:S, 0:S]
    stop = np.add((yy - np.float32(geo.cy)) ** 2, (xx - np.float32(geo.cx)) ** 2, dtype=np.float32)
    np.sqrt(stop, out=stop)
    np.subtract(np.float32(geo.r + 0.5), stop, out=stop)
    np.clip(stop, 0.0, 1.0, out=stop)
    light *= stop

    haze = None
    if rng.random() < 0.25:
        # Flash reflected at the cornea/lens: a bluish-white glow along part of the rim.
        h_phi = rng.uniform(0, 2 * np.pi)
        lobe = np.clip(np.cos(np.arctan2(Y, X) - h_phi), 0.0, 1.0) ** 2
        glow = np.exp(-np.abs(1.0 - rho) / rng.uniform(0.05, 0.15)) * lobe * rng.uniform(0.1, 0.35)
        glow = cv2.resize(glow.astype(np.float32), (S, S), interpolation=cv2.INTER_LINEAR)
        haze = glow[..., None] * np.array([0.45, 0.5, 0.62], np.float32)
    return light, haze


def expose(refl: np.ndarray, light: np.ndarray, haze: np.ndarray | None, cam: Camera,
           geo: Geometry, rng: np.random.Generator) -> np.ndarray:
    """Reflectance x light -> (S,S,3) uint8 RGB as the camera writes it (before JPEG).

    In the order of a camera: optics (light, defocus blur), sensor noise, then the tone curve.
    """
    img = refl * light[..., None]
    img *= np.float32(cam.exposure * 255.0) * np.asarray(cam.gains, np.float32)
    if haze is not None:
        img += haze * (light[..., None] * np.float32(cam.exposure * 255.0))
    if cam.blur_sigma >= 0.3:
        cv2.GaussianBlur(img, (0, 0), cam.blur_sigma, dst=img)
    # Luminance noise (one field for the three channels): most of a sensor's visible grain, at a
    # third of the cost of independent channel noise.
    noise = rng.standard_normal(img.shape[:2], dtype=np.float32)
    noise *= np.float32(cam.noise_sigma)
    img += noise[..., None]
    np.maximum(img, 0.0, out=img)  # noise below black clips to black
    u8 = cv2.convertScaleAbs(img)  # rounds and saturates to 0..255
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** (1.0 / cam.gamma) + 0.5, 0, 255).astype(np.uint8)
    u8 = cv2.LUT(u8, lut)
    if geo.band is not None:
        top, bottom = int(np.ceil(geo.band[0])), int(np.floor(geo.band[1]))
        u8[:max(top, 0)] = 0
        u8[bottom + 1:] = 0
    return u8
