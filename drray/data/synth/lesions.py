"""Lesions: where they go (from a grading.LesionPlan) and how each is painted with its mask.

Sizes are shares of the field-of-view diameter D, within real anatomical ranges:
microaneurysms 0.6-1% (the upper part of the real 0.3-1%, and drawn with a dark core, so a
grade-1 image keeps its microaneurysms at >= ~1.3 px once resized to 256 px), haemorrhages
0.8-3.2% (dot/blot) and 1.5-4.5% long (flame), pre-retinal haemorrhages 3-4.5%, hard-exudate
spots 0.25-1.6% in clusters, cotton-wool spots 1.6-4.2% long, new-vessel tufts 4-12% across.

Painting is local: each lesion computes an opacity `alpha` on a small window and blends a colour
into the reflectance there. The opacity is zero outside the lesion's outline and the mask is that
outline, so the pixels a lesion changes are exactly its mask (tests rely on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from drray.schema import LESION_TYPES
from drray.data.synth.anatomy import Geometry, window
from drray.data.synth.grading import QUADRANTS, LesionPlan
from drray.data.synth.vessels import Vessel

SIZE_RANGES = {  # long-axis diameter as a share of D, per lesion kind
    "ma": (0.006, 0.010),
    "he_blot": (0.008, 0.032),
    "he_flame": (0.015, 0.045),
    "he_preretinal": (0.03, 0.045),
    "ex": (0.0025, 0.016),
    "se": (0.016, 0.042),
    "nv": (0.04, 0.12),
}
IRREGULARITY = 0.12  # max relative radius perturbation of blob outlines


@dataclass
class Lesion:
    """One lesion to paint: type (a drray.schema.LESION_TYPES key), kind, centre and size in pixels."""

    type: str
    kind: str
    x: float
    y: float
    size: float
    """Long-axis diameter in pixels (for nv: the tuft's extent)."""
    aspect: float = 1.0
    """Short axis / long axis."""
    angle: float = 0.0
    """Long-axis direction, radians."""
    strength: float = 1.0
    harmonics: list[tuple[int, float, float]] = field(default_factory=list)


def _irregular(rng: np.random.Generator, amount: float) -> list[tuple[int, float, float]]:
    amps = rng.uniform(0, amount, 3) * np.array([1.0, 0.6, 0.4])
    amps *= min(1.0, IRREGULARITY / max(amps.sum(), 1e-9))
    return [(k, float(a), float(rng.uniform(0, 2 * np.pi))) for k, a in zip((2, 3, 5), amps)]


def _point(rng: np.random.Generator, geo: Geometry, quadrant: int | None, near=None, spread=0.0,
           max_rho: float = 0.9) -> tuple[float, float]:
    """A random visible spot away from the disc: uniform in a quadrant, or normal around `near`."""
    for _ in range(200):
        if near is not None:
            x, y = near[0] + rng.normal(0, spread), near[1] + rng.normal(0, spread)
        else:
            rho = geo.r * np.sqrt(rng.uniform(0.1**2, max_rho**2))
            if quadrant is None:
                phi = rng.uniform(0, 2 * np.pi)
            else:
                sup, nasal = QUADRANTS[quadrant].split("_")
                base = {("superior", "nasal"): -0.5, ("superior", "temporal"): -1.0,
                        ("inferior", "temporal"): 0.5, ("inferior", "nasal"): 0.0}[(sup, nasal)]
                phi = (base + rng.uniform(0.03, 0.47)) * np.pi
            x, y = geo.cx + rho * np.cos(phi), geo.cy + rho * np.sin(phi)
        # On a pixel centre, so even a lesion smaller than a pixel covers (and masks) that pixel.
        x, y = float(np.rint(x)), float(np.rint(y))
        if not geo.visible(x, y, margin=0.06 * geo.D):
            continue
        if (x - geo.disc_x) ** 2 / geo.disc_rx**2 + (y - geo.disc_y) ** 2 / geo.disc_ry**2 < 1.6**2:
            continue
        if quadrant is not None and geo.quadrant(x, y) != quadrant:
            continue
        return x, y
    raise RuntimeError(f"no visible spot found in quadrant {quadrant} near {near}: field geometry {geo}")


def _fibre_angle(geo: Geometry, x: float, y: float) -> float:
    """Direction of the nerve-fibre layer (flame haemorrhages lie along it): away from the disc."""
    return float(np.arctan2(y - geo.disc_y, x - geo.disc_x))


def place(rng: np.random.Generator, geo: Geometry, plan: LesionPlan, vessels: list[Vessel]) -> list[Lesion]:
    """Turn lesion counts into positioned, sized lesions (canonical frame)."""
    D = geo.D
    out: list[Lesion] = []
    size = lambda kind: rng.uniform(*SIZE_RANGES[kind]) * D  # noqa: E731
    for _ in range(plan.ma):
        x, y = _point(rng, geo, None, max_rho=0.8)
        out.append(Lesion("ma", "ma", x, y, size("ma"), strength=rng.uniform(0.85, 1.0)))
    for q, n in enumerate(plan.he_per_quadrant):
        for _ in range(n):
            x, y = _point(rng, geo, q)
            if rng.random() < plan.flame_share:
                out.append(Lesion("he", "flame", x, y, size("he_flame"), aspect=rng.uniform(0.3, 0.5),
                                  angle=_fibre_angle(geo, x, y) + rng.normal(0, 0.15),
                                  strength=rng.uniform(0.75, 0.95), harmonics=_irregular(rng, 0.1)))
            else:
                out.append(Lesion("he", "blot", x, y, size("he_blot"), aspect=rng.uniform(0.7, 1.0),
                                  angle=rng.uniform(0, np.pi), strength=rng.uniform(0.8, 1.0),
                                  harmonics=_irregular(rng, 0.25)))
    for _ in range(plan.ex_clusters):
        out.extend(_exudate_cluster(rng, geo))
    for _ in range(plan.se):
        # Cotton-wool spots gather along the arcades and around the disc.
        x, y = _point(rng, geo, None, near=(0.5 * (geo.disc_x + geo.fovea_x), geo.fovea_y), spread=0.2 * D)
        out.append(Lesion("se", "se", x, y, size("se"), aspect=rng.uniform(0.5, 0.9),
                          angle=rng.uniform(0, np.pi), strength=rng.uniform(0.65, 0.9),
                          harmonics=_irregular(rng, 0.3)))
    if plan.preretinal:
        x, y = _point(rng, geo, None, max_rho=0.7)
        out.append(Lesion("he", "preretinal", x, y, size("he_preretinal"), aspect=rng.uniform(0.55, 0.75),
                          strength=1.0, harmonics=_irregular(rng, 0.1)))
    nv_sites = [("disc", geo.disc_x, geo.disc_y, rng.uniform(0.06, 0.12) * D)] if plan.nv_disc else []
    if plan.nv_elsewhere:
        # New vessels elsewhere sprout from large vessels, away from the disc, well inside the field.
        widest = max(v.widths[0] for v in vessels)
        pts = np.concatenate([v.points for v in vessels if v.widths[0] > 0.45 * widest])
        ok = geo.visible(pts[:, 0], pts[:, 1], margin=0.1 * D)
        ok &= np.hypot(pts[:, 0] - geo.disc_x, pts[:, 1] - geo.disc_y) > 1.5 * geo.disc_rx + 0.05 * D
        candidates = pts[ok] if ok.any() else np.array([[geo.disc_x, geo.disc_y]])
        for _ in range(plan.nv_elsewhere):
            x, y = candidates[int(rng.integers(len(candidates)))]
            nv_sites.append(("elsewhere", x, y, size("nv")))
    for kind, x, y, extent in nv_sites:
        out.append(Lesion("nv", kind, float(np.rint(x)), float(np.rint(y)), extent,
                          strength=rng.uniform(0.6, 0.85)))
    return out


def _exudate_cluster(rng: np.random.Generator, geo: Geometry) -> list[Lesion]:
    """Hard exudates: a cluster or part-ring (circinate) of waxy spots, mostly around the macula."""
    D = geo.D
    cx, cy = _point(rng, geo, None, near=(geo.fovea_x, geo.fovea_y), spread=0.16 * D)
    radius = rng.uniform(0.015, 0.06) * D
    circinate = rng.random() < 0.35
    arc0, arc_len = rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 5.0)
    spots = []
    lo, hi = SIZE_RANGES["ex"]
    for _ in range(int(rng.integers(4, 26))):
        if circinate:
            phi = arc0 + rng.uniform(0, arc_len)
            rr = radius * rng.uniform(0.85, 1.15)
            x, y = cx + rr * np.cos(phi), cy + rr * np.sin(phi)
        else:
            x, y = cx + rng.normal(0, radius / 1.5), cy + rng.normal(0, radius / 1.5)
        x, y = np.rint(x), np.rint(y)
        if not geo.visible(x, y, margin=0.03 * D):
            continue
        d = D * (lo + (hi - lo) * rng.beta(1.2, 2.0))  # mostly small spots, a few plaques
        spots.append(Lesion("ex", "ex", float(x), float(y), d, aspect=rng.uniform(0.6, 1.0),
                            angle=rng.uniform(0, np.pi), strength=rng.uniform(0.8, 1.0),
                            harmonics=_irregular(rng, 0.35)))
    return spots


# ---------------------------------------------------------------------------------------- painting

# Blend targets. "mul": the colour is reflectance x factor (blood darkens what is under it);
# "abs": a colour of its own (lipid, swollen nerve fibres), scaled by the local brightness.
_COLOURS = {
    "ma": ("mul", (0.56, 0.25, 0.28)),
    "blot": ("mul", (0.58, 0.27, 0.28)),
    "flame": ("mul", (0.66, 0.33, 0.34)),
    "preretinal": ("mul", (0.5, 0.2, 0.22)),
    "ex": ("abs", (1.1, 0.92, 0.52)),
    "se": ("abs", (1.0, 0.9, 0.76)),
    "nv": ("mul", (0.8, 0.55, 0.58)),
}
# Opacity profile inside the outline: `floor` at the outline, rising to full over `edge` x the
# short semi-axis. The mask is exactly the outline, so soft edges never leak outside it.
_PROFILES = {  # kind: (floor, edge)
    "ma": (0.35, 1.0),
    "blot": (0.3, 0.4),
    "flame": (0.25, 0.6),
    "preretinal": (0.4, 0.25),
    "ex": (0.35, 0.35),
    "se": (0.2, 0.7),
}
NV_MASK_THRESHOLD = 0.3


def _blob_alpha(les: Lesion, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Opacity of an (irregular) ellipse; zero outside its outline, which is also its mask."""
    a = les.size / 2.0
    b = a * les.aspect
    c, s = np.cos(les.angle), np.sin(les.angle)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    if les.harmonics:
        phi = np.arctan2(v / b, u / a)
        wobble = 1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in les.harmonics)
        q = q / (wobble / (1.0 + IRREGULARITY))  # keep the outline inside the nominal size
    floor, edge = _PROFILES[les.kind]
    alpha = np.clip(floor + (1.0 - q) * b / max(edge * b, 0.6), 0.0, 1.0)
    if les.kind == "flame":
        # Streaks along the nerve fibres and a fading tail.
        alpha *= 0.8 + 0.2 * np.cos(v * (6.0 / max(b, 0.5)))
        alpha *= np.clip(1.1 - 0.4 * (u / a), 0.0, 1.0)
    elif les.kind == "preretinal":
        # A boat shape: blood settles, leaving a flat upper level.
        q = np.where(dy < -0.35 * b, 2.0, q)
    alpha[q > 1.0] = 0.0
    return alpha.astype(np.float32)


def _nv_alpha(rng: np.random.Generator, les: Lesion, shape: tuple[int, int], origin: tuple[float, float],
              D: float) -> np.ndarray:
    """A tuft of fine tortuous loops around the lesion centre, drawn supersampled."""
    ss = 4
    h, w = shape
    canvas = np.zeros((h * ss, w * ss), np.uint8)
    R = les.size / 2.0
    width = max(0.003 * D, 1.0) * ss  # at least a pixel, so small images keep their tufts
    step = max(0.012 * D, 1.0)
    cx, cy = les.x - origin[0], les.y - origin[1]
    for _ in range(int(rng.integers(4, 10))):
        x, y = cx + rng.normal(0, R / 3), cy + rng.normal(0, R / 3)
        theta = rng.uniform(0, 2 * np.pi)
        pts = []
        for _ in range(int(rng.integers(8, 25))):
            theta += rng.normal(0, 0.7)
            if (x - cx) ** 2 + (y - cy) ** 2 > R * R:  # curl back into the tuft
                theta = np.arctan2(cy - y, cx - x) + rng.normal(0, 0.5)
            x, y = x + step * np.cos(theta), y + step * np.sin(theta)
            pts.append((x, y))
        arr = np.rint((np.array(pts) * ss + (ss - 1) / 2.0) * 16).astype(np.int32)
        cv2.polylines(canvas, [arr], False, 255, thickness=int(round(width)), lineType=cv2.LINE_AA, shift=4)
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def paint(rng: np.random.Generator, refl: np.ndarray, geo: Geometry,
          lesions: list[Lesion]) -> dict[str, np.ndarray]:
    """Blend every lesion into `refl` (in place); returns one (S,S) bool mask per lesion type."""
    S = geo.size
    masks = {t: np.zeros((S, S), bool) for t in LESION_TYPES}
    order = {"se": 0, "ex": 1, "nv": 2, "he": 3, "ma": 4}  # later ones cover earlier ones
    for les in sorted(lesions, key=lambda lesion: order[lesion.type]):
        half = les.size / 2.0 + 2.0
        sy, sx, dx, dy = window(geo, les.x, les.y, half)
        if dx.size == 0:
            continue
        if les.type == "nv":
            alpha = _nv_alpha(rng, les, dx.shape, (sx.start, sy.start), geo.D)
            alpha[alpha < NV_MASK_THRESHOLD] = 0.0
        else:
            alpha = _blob_alpha(les, dx, dy)
        inside = alpha > 0.0
        alpha *= les.strength
        mode, colour = _COLOURS["nv" if les.type == "nv" else les.kind]
        patch = refl[sy, sx]
        if mode == "mul":
            target = patch * np.float32(colour)
        else:
            target = np.float32(colour) * patch.max(axis=2, keepdims=True).clip(0.6, 1.0)
        patch += alpha[..., None] * (target - patch)
        masks[les.type][sy, sx] |= inside
    return masks
