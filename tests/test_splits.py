"""Patient-level, grade-stratified splits (drray.data.splits)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drray.data.splits import assign_splits

FRACTIONS = (0.7, 0.1, 0.2)


def cohort(n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """Two eyes per patient, grades drawn with an APTOS-like imbalance, eyes within one grade."""
    rng = np.random.default_rng(seed)
    worst = rng.choice(5, size=n_patients, p=[0.45, 0.12, 0.25, 0.08, 0.10])
    rows = []
    for p, g in enumerate(worst):
        other = max(0, g - rng.integers(0, 2))
        rows += [(f"p{p:04d}", g), (f"p{p:04d}", other)]
    return pd.DataFrame(rows, columns=["patient", "label"])


def split(df: pd.DataFrame, **kwargs) -> np.ndarray:
    return assign_splits(df["patient"].tolist(), df["label"].tolist(),
                         df["official"].tolist() if "official" in df else None, **kwargs)


def test_patients_never_straddle_splits():
    df = cohort()
    df["split"] = split(df, seed=3)
    assert (df.groupby("patient")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "val", "test"}


def test_grade_stratification_roughly_holds():
    df = cohort(400)
    df["split"] = split(df, seed=0)
    worst = df.groupby("patient").agg(worst=("label", "max"), split=("split", "first"))
    for grade, group in worst.groupby("worst"):
        shares = group["split"].value_counts(normalize=True)
        for name, f in zip(("train", "val", "test"), FRACTIONS):
            # Within one patient of the exact count in every stratum (see drray.data.splits).
            assert abs(shares.get(name, 0.0) * len(group) - f * len(group)) <= 1.0 + 1e-9, (grade, name)


def test_same_seed_same_split_and_row_order_does_not_matter():
    df = cohort()
    a = split(df, seed=7)
    shuffled = df.sample(frac=1.0, random_state=1)
    b = pd.Series(split(shuffled, seed=7), index=shuffled.index).sort_index().to_numpy()
    assert (a == split(df, seed=7)).all() and (a == b).all()


def test_different_seed_different_split():
    df = cohort()
    assert (split(df, seed=0) != split(df, seed=1)).mean() > 0.2


def test_official_splits_are_kept_and_val_is_carved_from_train():
    df = cohort(200)
    df["official"] = np.where(df["patient"] < "p0150", "train", "test")
    out = split(df, seed=0)
    assert (out[df["official"] == "test"] == "test").all()
    carved = pd.Series(out[df["official"] == "train"]).value_counts(normalize=True)
    assert set(carved.index) == {"train", "val"}
    assert abs(carved["val"] - FRACTIONS[1] / (FRACTIONS[0] + FRACTIONS[1])) < 0.05


def test_official_val_means_no_carving():
    df = pd.DataFrame({"patient": ["a", "b", "c", "d"], "label": [0, 1, 2, 3],
                       "official": ["train", "train", "val", "test"]})
    assert split(df).tolist() == ["train", "train", "val", "test"]
    assert set(split(df.assign(official=["train", "train", "test", "test"]), carve_val=False)) == {"train", "test"}


def test_unsplit_rows_follow_their_patients_official_split():
    df = pd.DataFrame({"patient": ["a", "a", "b", "b", "b"], "label": [1, 2, 0, 0, None],
                       "official": ["test", None, "val", "val", None]})
    assert split(df).tolist() == ["test", "test", "val", "val", "val"]


def test_unknown_labels_get_a_split():
    df = pd.DataFrame({"patient": [f"u{i}" for i in range(50)], "label": [None] * 50})
    out = split(df, seed=0)
    assert set(out) == {"train", "val", "test"}
    counts = pd.Series(out).value_counts()
    assert abs(counts["train"] - 35) <= 1 and abs(counts["val"] - 5) <= 1 and abs(counts["test"] - 10) <= 1


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)])
def test_bad_fractions_are_refused(fractions):
    with pytest.raises(ValueError, match="split fractions"):
        assign_splits(["a"], [0], fractions=fractions)


def test_bad_official_split_and_length_mismatch_are_refused():
    with pytest.raises(ValueError, match="official splits must be one of"):
        assign_splits(["a"], [0], ["holdout"])
    with pytest.raises(ValueError, match="one entry per row"):
        assign_splits(["a", "b"], [0])
