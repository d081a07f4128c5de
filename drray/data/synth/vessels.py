"""The retinal vessel tree: arteries and veins leaving the optic disc, branching to the periphery.

Four arcades leave the disc (superior and inferior temporal ones curve around the macula, nasal
ones fan out), plus thin macular and nasal twigs. Each vessel is a smooth random path whose
heading follows a prescribed turn plus a random walk; it branches at random intervals with
Murray's law (parent^3 = child^3 + continuation^3) and stops at the field's edge, in the
foveal avascular zone, or when it becomes too thin to see. Widths are shares of the
field-of-view diameter D (a main vein near the disc ~1.2% of D, an artery ~2/3 of that).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from drray.data.synth.anatomy import Geometry

SUPERSAMPLE = 2  # vessels are drawn at twice the resolution, then area-averaged: sub-pixel widths
SHIFT = 4  # cv2 fixed-point bits for sub-pixel vertex positions
MAX_DEPTH = 4
_AR_KERNEL = 0.9 ** np.arange(40)


@dataclass(frozen=True)
class Vessel:
    """A polyline in canonical-frame pixels with a width (pixels) at each vertex."""

    points: np.ndarray
    widths: np.ndarray
    artery: bool


@dataclass(frozen=True)
class _Trunk:
    heading: float  # degrees, image frame (y down): -90 is up, 180 is temporal
    turn: float  # total prescribed turn, degrees
    turn_len: float  # share of D over which most of the turn happens
    width: float  # share of the main-vein width
    length: float  # share of D


def _trunks(rng: np.random.Generator) -> list[_Trunk]:
    j = lambda s: rng.normal(0.0, s)  # noqa: E731 - jitter in degrees
    trunks = [
        _Trunk(-100 + j(6), -100 + j(10), rng.uniform(0.1, 0.15), 1.0, 1.4),  # superior temporal arcade
        _Trunk(100 + j(6), 100 + j(10), rng.uniform(0.1, 0.15), 1.0, 1.4),  # inferior temporal arcade
        _Trunk(-62 + j(10), 35 + j(10), 0.15, rng.uniform(0.7, 0.85), 0.8),  # superior nasal
        _Trunk(62 + j(10), -35 + j(10), 0.15, rng.uniform(0.7, 0.85), 0.8),  # inferior nasal
    ]
    for _ in range(int(rng.integers(1, 3))):
        trunks.append(_Trunk(180 + j(12), j(15), 0.1, rng.uniform(0.3, 0.45), 0.3))  # macular twig
    for _ in range(int(rng.integers(0, 3))):
        trunks.append(_Trunk(j(20), j(20), 0.1, rng.uniform(0.35, 0.5), 0.6))  # nasal twig
    return trunks


def _grow(rng: np.random.Generator, geo: Geometry, x0: float, y0: float, heading: float, width: float,
          length: float, turn: float, turn_len: float, artery: bool, depth: int, out: list[Vessel]) -> None:
    """Grow one vessel from (x0, y0) and, recursively, its branches; appends them to `out`.

    heading and turn in degrees; width in pixels; length and turn_len as shares of D.
    """
    D = geo.D
    step = max(1.5, 0.008 * D)
    n = max(int(length * D / step), 2)
    s = np.arange(1, n + 1, dtype=np.float64) * step
    tl = turn_len * D
    # Gamma-shaped curvature: a vessel first runs straight, bends most at s = turn_len, then
    # straightens; the integral over the path is `turn`.
    kappa = np.deg2rad(turn) * s / tl**2 * np.exp(-s / tl)
    # Heading = prescribed curve + a slow random drift + a mean-reverting wiggle (AR(1), ~8 deg).
    drift = np.cumsum(rng.normal(0.0, 0.2 * np.sqrt(step / D), n))
    wiggle = np.convolve(rng.normal(0.0, 0.06, n), _AR_KERNEL)[:n]
    theta = np.deg2rad(heading) + np.cumsum(kappa * step) + drift + wiggle
    x = x0 + np.cumsum(step * np.cos(theta))
    y = y0 + np.cumsum(step * np.sin(theta))
    widths = width * (1.0 - 0.3 * s / (length * D))

    # Stop past the rim of the field and in the foveal avascular zone.
    stop = ((x - geo.cx) ** 2 + (y - geo.cy) ** 2 > (1.02 * geo.r) ** 2)
    stop |= (x - geo.fovea_x) ** 2 + (y - geo.fovea_y) ** 2 < (0.06 * D) ** 2
    idx = np.flatnonzero(stop)
    end = int(idx[0]) if idx.size else n
    if end < 2:
        return
    x, y, theta, widths, s = x[:end], y[:end], theta[:end], widths[:end].copy(), s[:end]

    min_width = max(0.35, 0.002 * D)
    if depth < MAX_DEPTH:
        pos = rng.uniform(0.04, 0.1) * D
        side = 1.0 if rng.random() < 0.5 else -1.0
        while pos < s[-1] - 0.03 * D:
            i = int(np.searchsorted(s, pos))
            wp = widths[i]
            wc = wp * rng.uniform(0.45, 0.8)
            if wc >= min_width:
                rest = max(wp**3 - wc**3, (0.6 * wp) ** 3) ** (1.0 / 3.0)
                widths[i:] *= rest / wp
                # Thin branches are short; each curves back towards its parent's direction.
                reach = rng.uniform(0.12, 0.4) * np.sqrt(wc / (0.012 * D))
                _grow(
                    rng, geo, x[i], y[i], np.rad2deg(theta[i]) + side * rng.uniform(25, 65),
                    wc, reach, -side * rng.uniform(0, 35), 0.05, artery, depth + 1, out,
                )
            side = -side
            pos += rng.uniform(0.05, 0.12) * D
    keep = widths >= min_width * 0.7
    if keep.sum() >= 2:
        last = int(np.flatnonzero(keep)[-1]) + 1
        pts = np.stack([np.concatenate([[x0], x[:last]]), np.concatenate([[y0], y[:last]])], axis=1)
        out.append(Vessel(pts, np.concatenate([[widths[0]], widths[:last]]), artery))


def vessel_tree(rng: np.random.Generator, geo: Geometry) -> list[Vessel]:
    """All vessels of one eye (canonical frame), arteries and veins interleaved."""
    D = geo.D
    vein_w = rng.uniform(0.010, 0.013) * D
    art_w = vein_w * rng.uniform(0.62, 0.78)
    out: list[Vessel] = []
    for trunk in _trunks(rng):
        for artery in (False, True):
            # Artery and vein of one trunk leave the cup side by side, a few degrees apart.
            x0 = geo.disc_x + rng.normal(0, 0.15) * geo.disc_rx
            y0 = geo.disc_y + rng.normal(0, 0.15) * geo.disc_ry
            heading = trunk.heading + rng.normal(0, 6)
            w = (art_w if artery else vein_w) * trunk.width
            _grow(rng, geo, x0, y0, heading, w, trunk.length, trunk.turn + rng.normal(0, 6),
                  trunk.turn_len, artery, 0, out)
    return out


def vessel_maps(vessels: list[Vessel], geo: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Opacity maps (veins, arteries), (S,S) float32 in [0,1], anti-aliased by supersampling."""
    ss = SUPERSAMPLE
    size = geo.size
    big = size * ss
    canvases = [np.zeros((big, big), np.uint8), np.zeros((big, big), np.uint8)]
    strokes = []  # (thickness, value, artery, points)
    for v in vessels:
        w_ss = v.widths * ss
        thick = np.maximum(np.rint(w_ss), 1).astype(int)
        # Thin vessels hold less blood, so they are paler; quantised to keep strokes long.
        contrast = np.clip((v.widths / (0.009 * geo.D)) ** 0.7, 0.3, 1.0)
        # Thinner than a supersampled pixel: draw one pixel wide, fainter.
        value = (np.rint(16 * np.clip(w_ss, 0.0, 1.0) * contrast) * 15.9).astype(int)
        pts = np.rint((v.points * ss + (ss - 1) / 2.0) * (1 << SHIFT)).astype(np.int32)
        cuts = np.flatnonzero((np.diff(thick) != 0) | (np.diff(value) != 0)) + 1
        start = 0
        for end in list(cuts) + [len(pts)]:
            seg = pts[max(start - 1, 0):end]
            if len(seg) >= 2:
                strokes.append((int(thick[start]), int(value[start]), v.artery, seg))
            start = end
    # Wider strokes last, so a thin branch never paints over its parent's core.
    strokes.sort(key=lambda t: (t[0], t[1]))
    for thick, value, artery, seg in strokes:
        cv2.polylines(canvases[int(artery)], [seg], False, value, thickness=thick,
                      lineType=cv2.LINE_AA, shift=SHIFT)
    out = [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
           for c in canvases]
    return out[0], out[1]


def apply_vessels(refl: np.ndarray, veins: np.ndarray, arteries: np.ndarray, rng: np.random.Generator) -> None:
    """Darken the reflectance under vessels (in place); blood absorbs green most, red least."""
    vein_loss = np.array([0.38, 0.6, 0.5], np.float32) * np.float32(rng.uniform(0.85, 1.1))
    art_loss = np.array([0.2, 0.42, 0.33], np.float32) * np.float32(rng.uniform(0.85, 1.1))
    for c in range(3):
        refl[..., c] *= (1.0 - vein_loss[c] * veins) * (1.0 - art_loss[c] * arteries)
