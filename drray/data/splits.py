"""Patient-level, grade-stratified train/val/test splits: a pure function of the rows and a seed.

Rules, in order:
1. A row with an official split keeps it.
2. A row without one, whose patient has officially split rows, joins the patient's official
   split (the most common one; ties go to test, then val), so a patient never straddles splits
   because of the unsplit rows.
3. Val carved from train: when the rows have an official train split but no official val (the
   source publishes only train/test), patients whose rows are all official "train" are split
   train/val in the ratio of `fractions[0]:fractions[1]`.
4. Patients with no official split at all are split train/val/test by `fractions`.

Steps 3 and 4 are stratified by the patient's worst grade (unknown grades form a stratum of
their own, so unlabelled rows get a split too). Within a stratum the patients, sorted by id and
shuffled by the seed, are laid on [0, 1) at evenly spaced points with a random offset, and each
takes the split whose share of [0, 1) it falls in: the counts per split are within one of the
exact fractions in every stratum, even a stratum of one patient is unbiased, and the outcome does
not depend on the row order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from drray.schema import SPLITS

_UNKNOWN = -1
# Tie-break order when a patient's officially split rows disagree.
_PRIORITY = {"test": 0, "val": 1, "train": 2}


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative train/val/test shares summing to 1, got {fractions}")
    return f  # type: ignore[return-value]


def stratified_assign(
    patients: pd.Series, strata: pd.Series, fractions: Sequence[float], rng: np.random.Generator
) -> pd.Series:
    """One split per patient (index of the result), stratified by `strata` (aligned with `patients`)."""
    cum = np.cumsum(fractions)
    cum[-1] = 1.0 + 1e-9  # every point lands in some split despite rounding
    frame = pd.DataFrame({"patient": patients.to_numpy(), "stratum": strata.to_numpy()}).sort_values(["stratum", "patient"])
    out: dict[str, str] = {}
    for _, group in frame.groupby("stratum", sort=True):
        ids = group["patient"].to_numpy()[rng.permutation(len(group))]
        points = (np.arange(len(ids)) + rng.random()) / len(ids)
        which = np.searchsorted(cum, points, side="right")
        out.update(zip(ids, (SPLITS[i] for i in which)))
    return pd.Series(out, dtype=object)


def assign_splits(
    patient_ids: Sequence[str],
    labels: Sequence[float | int | None],
    official: Sequence[str | None] | None = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    carve_val: bool | None = None,
) -> np.ndarray:
    """A split ("train"/"val"/"test") per row; see the module docstring for the rules.

    patient_ids: one per row (rows of one patient share it).
    labels: grade per row, None/NaN when unknown.
    official: the source's split per row, None where it has none.
    carve_val: carve val from official train patients; None = when no row is officially "val".
    """
    f = _check_fractions(fractions)
    n = len(patient_ids)
    if len(labels) != n or (official is not None and len(official) != n):
        raise ValueError(f"patient_ids, labels and official must have one entry per row ({n})")
    df = pd.DataFrame({
        "patient": pd.Series(patient_ids, dtype=object).astype(str).to_numpy(),
        "label": pd.to_numeric(pd.Series(labels, dtype=object), errors="coerce").to_numpy(dtype=float),
        "split": pd.Series(official if official is not None else [None] * n, dtype=object).to_numpy(),
    })
    bad = sorted({s for s in df["split"].dropna()} - set(SPLITS))
    if bad:
        raise ValueError(f"official splits must be one of {SPLITS}, got {bad}")

    # Rule 2: unsplit rows follow their patient's official split.
    officials = df.dropna(subset=["split"])
    if len(officials):
        counts = officials.groupby(["patient", "split"]).size().reset_index(name="n")
        counts["priority"] = counts["split"].map(_PRIORITY)
        chosen = counts.sort_values(["patient", "n", "priority"], ascending=[True, False, True]) \
            .drop_duplicates("patient").set_index("patient")["split"]
        df["split"] = df["split"].where(df["split"].notna(), df["patient"].map(chosen))

    worst = df.groupby("patient")["label"].max().fillna(_UNKNOWN)
    result = df["split"].copy()

    # Rule 3: carve val from patients who are official train only.
    if carve_val is None:
        carve_val = bool((df["split"] == "train").any() and not (df["split"] == "val").any())
    if carve_val and f[0] + f[1] > 0:
        only_train = df.groupby("patient")["split"].agg(lambda s: set(s) == {"train"})
        carve = only_train[only_train].index
        if len(carve):
            tv = (f[0] / (f[0] + f[1]), f[1] / (f[0] + f[1]), 0.0)
            chosen = stratified_assign(pd.Series(carve), worst.loc[carve].reset_index(drop=True), tv,
                                       np.random.default_rng([seed, 1]))
            mask = df["patient"].isin(carve)
            result[mask] = df.loc[mask, "patient"].map(chosen)

    # Rule 4: patients without any official split.
    free = df.loc[df["split"].isna(), "patient"].unique()
    if len(free):
        chosen = stratified_assign(pd.Series(free), worst.loc[free].reset_index(drop=True), f,
                                   np.random.default_rng([seed, 2]))
        mask = df["split"].isna()
        result[mask] = df.loc[mask, "patient"].map(chosen)
    return result.to_numpy(dtype=object)
