"""Fundus anatomy: field-of-view geometry, background reflectance, macula and optic disc.

Everything is drawn in a canonical frame, a right eye as photographed (optic disc on the right,
the nasal side); render.py mirrors left eyes at the end. Sizes are shares of the field-of-view
diameter D, as in a 45-degree macula-centred photograph: optic disc ~15% of D, disc to fovea
~0.33 D, macular pigment spread ~0.1 D.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from drray.data.synth.grading import QUADRANTS


@dataclass(frozen=True)
class Geometry:
    """Where things are in one photograph, in pixels of the canonical (right-eye) frame."""

    size: int
    cx: float
    cy: float
    r: float
    """Radius of the circular field of view."""
    band: tuple[float, float] | None
    """Visible rows [top, bottom] when the field is cut off at top and bottom, else None."""
    disc_x: float
    disc_y: float
    disc_rx: float
    disc_ry: float
    fovea_x: float
    fovea_y: float

    @property
    def D(self) -> float:
        return 2.0 * self.r

    @property
    def disc_diameter(self) -> float:
        """Diameter of the circle with the disc's area."""
        return 2.0 * float(np.sqrt(self.disc_rx * self.disc_ry))

    def visible(self, x: np.ndarray | float, y: np.ndarray | float, margin: float = 0.0) -> np.ndarray:
        """True where (x, y) lies inside the field of view (shrunk by `margin` pixels) and the band."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        inside = (x - self.cx) ** 2 + (y - self.cy) ** 2 <= (self.r - margin) ** 2
        if self.band is not None:
            inside &= (y >= self.band[0] + margin) & (y <= self.band[1] - margin)
        return inside

    def quadrant(self, x: float, y: float) -> int:
        """Index into QUADRANTS; nasal is the disc side (+x in the canonical frame)."""
        superior = y < self.cy
        nasal = x >= self.cx
        return QUADRANTS.index(f"{'superior' if superior else 'inferior'}_{'nasal' if nasal else 'temporal'}")


def sample_geometry(rng: np.random.Generator, size: int, disc_frac: float) -> Geometry:
    """Field of view, fovea and disc for one photograph; ~10% have the field cut off at top/bottom."""
    half = size / 2.0
    cut = rng.random() < 0.1
    if cut:
        # As in many APTOS photographs: a wide circle whose top and bottom fall off the sensor.
        r = half * rng.uniform(0.95, 0.985)
    else:
        r = half * rng.uniform(0.86, 0.96)
    slack = max(half - r - 1.0, 0.0)
    cx = half - 0.5 + rng.uniform(-slack, slack)
    cy = half - 0.5 + rng.uniform(-slack, slack)
    band = None
    if cut:
        h_top = r * rng.uniform(0.74, 0.9)
        h_bottom = r * rng.uniform(0.74, 0.9)
        band = (cy - h_top, cy + h_bottom)
    D = 2.0 * r
    fovea_x = cx + rng.uniform(-0.07, 0.02) * D
    fovea_y = cy + rng.uniform(-0.03, 0.04) * D
    # The disc sits ~2.5 disc diameters nasal to the fovea and slightly above it.
    disc_x = fovea_x + rng.uniform(0.30, 0.35) * D
    disc_y = fovea_y - rng.uniform(0.0, 0.04) * D
    elong = rng.uniform(1.0, 1.12)  # discs are slightly taller than wide
    radius = disc_frac * D / 2.0
    return Geometry(
        size=size, cx=cx, cy=cy, r=r, band=band,
        disc_x=disc_x, disc_y=disc_y, disc_rx=radius / np.sqrt(elong), disc_ry=radius * np.sqrt(elong),
        fovea_x=fovea_x, fovea_y=fovea_y,
    )


def smooth_noise(rng: np.random.Generator, cells: int, out: int) -> np.ndarray:
    """Band-limited noise: a `cells` x `cells` normal grid upsampled (bicubic) to `out` x `out`, float32."""
    k = -(-out // cells)  # pixels per cell
    grid = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    big = cv2.resize(grid, ((cells + 2) * k, (cells + 2) * k), interpolation=cv2.INTER_CUBIC)
    # Drop the outer ring of cells, where bicubic upsampling is one-sided.
    return np.ascontiguousarray(big[k:k + out, k:k + out])


def background(rng: np.random.Generator, geo: Geometry, pigment: float) -> np.ndarray:
    """Fundus reflectance without vessels or disc: choroidal texture, macula and fovea, (S,S,3) float32."""
    S = geo.size
    g = min(S, 128)  # everything here is low-frequency: build it small, upsample once
    scale = S / g
    light = np.array([0.98, 0.58, 0.30], np.float32)
    dark = np.array([0.80, 0.32, 0.15], np.float32)
    base = light * (1.0 - pigment) + dark * pigment
    base = base * rng.uniform(0.95, 1.05, 3).astype(np.float32)

    ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
    xs = (xs + 0.5) * scale - 0.5
    ys = (ys + 0.5) * scale - 0.5
    D = geo.D

    tex = 1.0 + 0.05 * smooth_noise(rng, 5, g) + 0.035 * smooth_noise(rng, 16, g)
    # Choroidal vessels show through a lightly pigmented fundus as an orange network ("tigroid").
    tigroid = (1.0 - pigment) * rng.uniform(0.0, 0.12) * (rng.random() < 0.5)
    ridges = 1.0 - np.abs(smooth_noise(rng, 22, g))
    red_tex = tex + tigroid * (ridges - 0.5)
    green_tex = tex + 1.4 * tigroid * (ridges - 0.5)

    d2_fovea = (xs - geo.fovea_x) ** 2 + (ys - geo.fovea_y) ** 2
    sigma_mac = rng.uniform(0.07, 0.1) * D
    sigma_fov = rng.uniform(0.015, 0.022) * D
    macula = np.exp(-d2_fovea / (2 * sigma_mac**2))
    fovea = np.exp(-d2_fovea / (2 * sigma_fov**2))
    depth = rng.uniform(0.12, 0.28)
    # Macular (xanthophyll) pigment absorbs blue and green more than red.
    absorb = np.array([0.6, 1.0, 1.15], np.float32)
    shade = np.empty((g, g, 3), np.float32)
    for c, t in enumerate((red_tex, green_tex, tex)):
        shade[..., c] = base[c] * t * (1.0 - depth * absorb[c] * macula) * (1.0 - 0.25 * absorb[c] * fovea)
    return cv2.resize(shade, (S, S), interpolation=cv2.INTER_CUBIC)


def window(geo: Geometry, x: float, y: float, half: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Slices of a square window around (x, y), clipped to the image, and its pixel coordinates."""
    S = geo.size
    x0, x1 = max(int(np.floor(x - half)), 0), min(int(np.ceil(x + half)) + 1, S)
    y0, y1 = max(int(np.floor(y - half)), 0), min(int(np.ceil(y + half)) + 1, S)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), xx - np.float32(x), yy - np.float32(y)


def draw_disc(rng: np.random.Generator, refl: np.ndarray, geo: Geometry) -> np.ndarray:
    """Paint the optic disc (rim, cup, sometimes a temporal atrophy crescent); returns its (S,S) bool mask."""
    rx, ry = geo.disc_rx, geo.disc_ry
    sy, sx, dx, dy = window(geo, geo.disc_x, geo.disc_y, 1.45 * max(rx, ry))
    q = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    rmin = min(rx, ry)
    patch = refl[sy, sx]

    # Peripapillary atrophy: a pale crescent on the temporal (-x) side in some eyes.
    if rng.random() < 0.35:
        ang = np.arctan2(dy, -dx)
        lobe = np.clip(np.cos(ang), 0.0, 1.0) ** 2
        ring = np.clip(1.0 - np.abs(q - 1.1) / 0.12, 0.0, 1.0) * lobe * rng.uniform(0.3, 0.7)
        crescent = np.array([0.95, 0.78, 0.58], np.float32)
        patch += ring[..., None] * (crescent - patch)

    edge = max(0.18 * rmin, 0.6)
    alpha = np.clip((1.0 - q) * rmin / edge + 0.5, 0.0, 1.0)
    # The neuroretinal rim: yellow-orange, pinker on the nasal (+x) side.
    rim = np.array([1.12, 0.78, 0.46], np.float32) * np.float32(rng.uniform(0.92, 1.05))
    pink = np.clip(dx / rx, 0.0, 1.0)[..., None] * np.array([0.0, -0.1, -0.06], np.float32)
    patch += alpha[..., None] * (rim + pink - patch)

    cup_ratio = rng.uniform(0.25, 0.55)
    cx_off = -rng.uniform(0.0, 0.2) * rx  # the cup sits a little temporal of the disc centre
    qc = np.sqrt(((dx - cx_off) / (cup_ratio * rx)) ** 2 + (dy / (cup_ratio * ry)) ** 2)
    cup_alpha = np.clip((1.0 - qc) * 2.5, 0.0, 1.0) * rng.uniform(0.6, 0.95)
    cup = np.array([1.2, 1.0, 0.74], np.float32)
    patch += cup_alpha[..., None] * (cup - patch)
    refl[sy, sx] = patch

    mask = np.zeros((geo.size, geo.size), bool)
    mask[sy, sx] = alpha >= 0.5
    return mask


def fovea_reflex(rng: np.random.Generator, refl: np.ndarray, geo: Geometry) -> None:
    """The small bright foveal light reflex seen in many young eyes (in place)."""
    if rng.random() > 0.5:
        return
    rad = max(0.006 * geo.D, 0.7)
    sy, sx, dx, dy = window(geo, geo.fovea_x, geo.fovea_y, 3 * rad)
    glow = np.exp(-(dx**2 + dy**2) / (2 * rad**2)) * rng.uniform(0.1, 0.3)
    refl[sy, sx] += glow[..., None] * np.array([0.5, 0.5, 0.45], np.float32)
