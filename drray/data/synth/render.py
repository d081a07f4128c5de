"""One synthetic photograph from (seed, index, config): anatomy, lesions, camera; pure, no I/O.

Random streams: the image's generator `default_rng([seed, index])` spawns four independent
children, for the grade, the anatomy, the lesions and the camera. Drawing lesions therefore never
shifts the anatomy or the camera, so `compose(..., keep_clean=True)` can return the same fundus
without its lesions, and tests can check that lesion painting stays inside the masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drray.config import SynthConfig
from drray.schema import LESION_TYPES, MASK_TYPES, OPTIC_DISC
from drray.data.synth.anatomy import Geometry, background, draw_disc, fovea_reflex, sample_geometry
from drray.data.synth.grading import QUADRANTS, LesionPlan, grade_for, plan_for_grade
from drray.data.synth.lesions import Lesion, paint, place
from drray.data.synth.patient import Patient, patient_for
from drray.data.synth.photometry import Camera, expose, illumination, sample_camera
from drray.data.synth.vessels import apply_vessels, vessel_maps, vessel_tree


@dataclass(frozen=True)
class SynthImage:
    """A rendered photograph, its masks and its ground truth."""

    image: np.ndarray
    """(S,S,3) uint8 RGB, before JPEG encoding."""
    masks: dict[str, np.ndarray]
    """One (S,S) bool mask per drray.schema.MASK_TYPES key ("ma","he","ex","se","nv","od")."""
    grade: int
    """ICDR grade 0-4."""
    eye: str
    """"left" or "right"."""
    patient_id: str
    jpeg_quality: int
    meta: dict
    """Lesion counts per type and per quadrant, field of view, disc, fovea, camera, cut-off flag, lesions."""


@dataclass
class Layers:
    """The canonical-frame (right-eye layout) intermediate results of one render, for tests and debugging."""

    patient: Patient
    grade: int
    geo: Geometry
    plan: LesionPlan
    lesions: list[Lesion]
    refl: np.ndarray
    """Reflectance with lesions, (S,S,3) float32."""
    clean: np.ndarray | None
    """The same reflectance before any lesion was painted (only with keep_clean=True)."""
    masks: dict[str, np.ndarray]
    camera_rng: np.random.Generator
    """The image's camera stream, untouched so far (render() draws the photometry from it)."""


def compose(seed: int, index: int, cfg: SynthConfig, keep_clean: bool = False) -> Layers:
    """Everything up to the camera: grade, geometry, anatomy, lesions and masks (canonical frame)."""
    root = np.random.default_rng([seed, index])
    r_grade, r_anatomy, r_lesions, r_camera = root.spawn(4)
    patient = patient_for(seed, index, cfg, r_grade)
    grade = grade_for(r_grade, patient.severity_z, cfg)

    geo = sample_geometry(r_anatomy, cfg.size, patient.disc_frac)
    refl = background(r_anatomy, geo, patient.pigment)
    od = draw_disc(r_anatomy, refl, geo)
    vessels = vessel_tree(r_anatomy, geo)
    veins, arteries = vessel_maps(vessels, geo)
    apply_vessels(refl, veins, arteries, r_anatomy)
    fovea_reflex(r_anatomy, refl, geo)

    plan = plan_for_grade(r_lesions, grade)
    lesions = place(r_lesions, geo, plan, vessels)
    clean = refl.copy() if keep_clean else None
    masks = paint(r_lesions, refl, geo, lesions)
    masks[OPTIC_DISC] = od
    yy, xx = np.ogrid[0:cfg.size, 0:cfg.size]
    visible = geo.visible(xx, yy)
    for t in MASK_TYPES:
        masks[t] &= visible
    return Layers(patient, grade, geo, plan, lesions, refl, clean, masks, r_camera)


def _meta(layers: Layers, camera: Camera, mirror: bool) -> dict:
    geo = layers.geo
    S = geo.size
    fx = (lambda x: S - 1 - x) if mirror else (lambda x: x)
    counts = {t: 0 for t in LESION_TYPES}
    per_q = {t: {q: 0 for q in QUADRANTS} for t in LESION_TYPES}
    for les in layers.lesions:
        counts[les.type] += 1
        per_q[les.type][QUADRANTS[geo.quadrant(les.x, les.y)]] += 1
    r2 = lambda v: round(float(v), 2)  # noqa: E731
    return {
        "counts": counts,
        "quadrant_counts": per_q,
        "fov": {"cx": r2(fx(geo.cx)), "cy": r2(geo.cy), "r": r2(geo.r)},
        "cut_off": geo.band is not None,
        "visible_rows": None if geo.band is None else [r2(geo.band[0]), r2(geo.band[1])],
        "disc": {"x": r2(fx(geo.disc_x)), "y": r2(geo.disc_y), "diameter": r2(geo.disc_diameter)},
        "fovea": {"x": r2(fx(geo.fovea_x)), "y": r2(geo.fovea_y)},
        "camera": {"exposure": r2(camera.exposure), "gamma": r2(camera.gamma),
                   "blur_sigma": r2(camera.blur_sigma), "noise_sigma": r2(camera.noise_sigma)},
        "lesions": [{"type": les.type, "kind": les.kind, "x": r2(fx(les.x)), "y": r2(les.y), "size": r2(les.size)}
                    for les in layers.lesions],
    }


def render(seed: int, index: int, cfg: SynthConfig) -> SynthImage:
    """Photograph `index` of the set `seed`: the same arguments always give the same pixels."""
    layers = compose(seed, index, cfg)
    r_camera = layers.camera_rng
    camera = sample_camera(r_camera, cfg.size, layers.patient.camera_gains)
    light, haze = illumination(r_camera, layers.geo)
    image = expose(layers.refl, light, haze, camera, layers.geo, r_camera)
    masks = layers.masks
    mirror = layers.patient.eye == "left"  # canonical frame is a right eye: disc on the right
    if mirror:
        image = np.ascontiguousarray(image[:, ::-1])
        masks = {t: np.ascontiguousarray(m[:, ::-1]) for t, m in masks.items()}
    return SynthImage(
        image=image,
        masks={t: masks[t] for t in MASK_TYPES},
        grade=layers.grade,
        eye=layers.patient.eye,
        patient_id=layers.patient.patient_id,
        jpeg_quality=layers.patient.jpeg_quality,
        meta=_meta(layers, camera, mirror),
    )
