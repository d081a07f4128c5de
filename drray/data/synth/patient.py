"""Who an image belongs to: patient id, eye, and the traits both eyes of one patient share.

With `patients_share_eyes`, images 2k and 2k+1 are the left and right eye of patient
`p{seed}_{k}`. Both eyes then share what a patient and a screening visit fix: fundus
pigmentation, optic-disc size, the camera's colour balance and JPEG quality, and a latent
severity that correlates (but does not equal) the two eyes' grades. Patient traits come from
their own random stream, `default_rng([seed, k, PATIENT_STREAM])`, so an image's bytes depend
only on (seed, index) and the config, never on n or on which task rendered it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drray.config import SynthConfig

PATIENT_STREAM = 0x5EED_FACE
"""Third seed word of a patient's stream; keeps it apart from the per-image `[seed, index]` streams."""


@dataclass(frozen=True)
class Patient:
    """One patient's identity and the traits shared by the eyes photographed at one visit."""

    patient_id: str
    eye: str
    pigment: float
    """0 = light orange fundus, 1 = dark red-brown fundus."""
    disc_frac: float
    """Optic-disc diameter as a share of the field-of-view diameter D."""
    camera_gains: tuple[float, float, float]
    """Per-channel colour balance of the camera (R, G, B)."""
    jpeg_quality: int
    severity_z: float
    """Latent standard-normal severity; each eye mixes it with its own draw (see grading)."""


def _traits(rng: np.random.Generator) -> dict:
    # A light-skinned fundus is orange and shows choroidal vessels; a pigmented one is darker and
    # redder. Beta(2, 2) keeps most patients in between.
    return dict(
        pigment=float(rng.beta(2.0, 2.0)),
        disc_frac=float(rng.uniform(0.135, 0.165)),
        camera_gains=(
            float(rng.uniform(0.92, 1.08)),
            float(rng.uniform(0.88, 1.12)),
            float(rng.uniform(0.8, 1.2)),
        ),
        jpeg_quality=int(rng.integers(72, 98)),
        severity_z=float(rng.standard_normal()),
    )


def patient_for(seed: int, index: int, cfg: SynthConfig, rng: np.random.Generator) -> Patient:
    """The patient of image `index`; `rng` (the image's own stream) is used only without eye pairing."""
    if cfg.patients_share_eyes:
        k = index // 2
        traits = _traits(np.random.default_rng([seed, k, PATIENT_STREAM]))
        return Patient(patient_id=f"p{seed}_{k}", eye="left" if index % 2 == 0 else "right", **traits)
    traits = _traits(rng)
    eye = "left" if rng.random() < 0.5 else "right"
    return Patient(patient_id=f"p{seed}_{index}", eye=eye, **traits)
