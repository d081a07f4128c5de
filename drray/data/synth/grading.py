"""ICDR grade of each synthetic eye and the lesion counts that grade implies.

The rules follow the International Clinical Diabetic Retinopathy scale:

- 0 no DR: no lesion at all.
- 1 mild NPDR: microaneurysms only.
- 2 moderate NPDR: more than microaneurysms (haemorrhages, hard exudates, cotton-wool spots)
  but below severe: at most `MODERATE_HE_PER_QUADRANT` haemorrhages in any quadrant.
- 3 severe NPDR, by the haemorrhage arm of the 4-2-1 rule: at least `SEVERE_HE_PER_QUADRANT`
  haemorrhages in each of the four quadrants. The rule's ">20 per quadrant" counts over the
  seven ETDRS fields; one 45-degree photograph covers about a third of that retina, so the
  threshold is scaled to 8 per quadrant of the photograph.
- 4 PDR: neovascularisation (at the disc and/or elsewhere) on top of moderate or severe NPDR,
  sometimes with a pre-retinal haemorrhage.

Quadrants are cut by the horizontal and vertical lines through the centre of the field of view:
superior/inferior and nasal (the optic-disc side) / temporal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drray.config import SynthConfig

QUADRANTS = ("superior_nasal", "superior_temporal", "inferior_nasal", "inferior_temporal")
SEVERE_HE_PER_QUADRANT = 8
MODERATE_HE_PER_QUADRANT = 5
EYE_CORRELATION = 0.7
"""Correlation of the two eyes' latent severities (grades of fellow eyes agree often, not always)."""


@dataclass
class LesionPlan:
    """How many lesions of each kind an image gets; lesions.place() turns it into positions."""

    ma: int = 0
    he_per_quadrant: tuple[int, int, int, int] = (0, 0, 0, 0)
    """Intraretinal haemorrhages per quadrant, in QUADRANTS order."""
    flame_share: float = 0.3
    ex_clusters: int = 0
    se: int = 0
    nv_disc: bool = False
    nv_elsewhere: int = 0
    preretinal: bool = False


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def sample_grade(u_or_z: float, balance: tuple[float, ...], is_z: bool) -> int:
    """Invert the cumulative class balance at u (uniform) or at Phi(z) (standard normal)."""
    u = _normal_cdf(u_or_z) if is_z else u_or_z
    shares = np.asarray(balance, dtype=np.float64)
    cum = np.cumsum(shares / shares.sum())
    return int(min(np.searchsorted(cum, u, side="right"), len(cum) - 1))


def grade_for(rng: np.random.Generator, severity_z: float, cfg: SynthConfig) -> int:
    """The image's grade; with eye pairing, both eyes share part of the patient's latent severity.

    The mixed variable is again standard normal, so each image's grade still follows
    `cfg.class_balance` exactly; only the pairing between fellow eyes changes.
    """
    own = float(rng.standard_normal())
    if not cfg.patients_share_eyes:
        return sample_grade(own, cfg.class_balance, is_z=True)
    rho = EYE_CORRELATION
    z = rho * severity_z + math.sqrt(1.0 - rho * rho) * own
    return sample_grade(z, cfg.class_balance, is_z=True)


def _moderate_he(rng: np.random.Generator) -> tuple[int, int, int, int]:
    n_quadrants = int(rng.choice(5, p=[0.15, 0.3, 0.25, 0.15, 0.15]))
    counts = [0, 0, 0, 0]
    # Haemorrhages in all four quadrants are allowed at moderate grade: it is the count per
    # quadrant, not the spread, that separates moderate from severe.
    cap = 3 if n_quadrants == 4 else MODERATE_HE_PER_QUADRANT
    for q in rng.permutation(4)[:n_quadrants]:
        counts[int(q)] = int(rng.integers(1, cap + 1))
    return tuple(counts)  # type: ignore[return-value]


def _moderate(rng: np.random.Generator) -> LesionPlan:
    plan = LesionPlan(
        ma=int(rng.integers(3, 21)),
        he_per_quadrant=_moderate_he(rng),
        flame_share=float(rng.uniform(0.1, 0.4)),
        ex_clusters=int(rng.choice(4, p=[0.55, 0.25, 0.12, 0.08])),
        se=int(rng.choice(4, p=[0.7, 0.15, 0.1, 0.05])),
    )
    if sum(plan.he_per_quadrant) == 0 and plan.ex_clusters == 0 and plan.se == 0:
        # Moderate means more than microaneurysms: give it at least one haemorrhage.
        q = int(rng.integers(4))
        counts = [0, 0, 0, 0]
        counts[q] = int(rng.integers(1, 4))
        plan.he_per_quadrant = tuple(counts)  # type: ignore[assignment]
    return plan


def _severe(rng: np.random.Generator) -> LesionPlan:
    lo = SEVERE_HE_PER_QUADRANT
    return LesionPlan(
        ma=int(rng.integers(10, 41)),
        he_per_quadrant=tuple(int(rng.integers(lo, 2 * lo + 5)) for _ in range(4)),  # type: ignore[arg-type]
        flame_share=float(rng.uniform(0.15, 0.45)),
        ex_clusters=int(rng.choice(6, p=[0.3, 0.25, 0.2, 0.12, 0.08, 0.05])),
        se=int(rng.choice(7, p=[0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05])),
    )


def plan_for_grade(rng: np.random.Generator, grade: int) -> LesionPlan:
    """Lesion counts for an ICDR grade (see the module docstring for the rules)."""
    if grade == 0:
        return LesionPlan()
    if grade == 1:
        return LesionPlan(ma=int(rng.integers(2, 13)))
    if grade == 2:
        return _moderate(rng)
    if grade == 3:
        return _severe(rng)
    if grade == 4:
        plan = _severe(rng) if rng.random() < 0.55 else _moderate(rng)
        plan.nv_disc = bool(rng.random() < 0.6)
        plan.nv_elsewhere = int(rng.integers(0 if plan.nv_disc else 1, 3))
        plan.preretinal = bool(rng.random() < 0.3)
        return plan
    raise ValueError(f"grade {grade} is outside ICDR grades 0-4")
