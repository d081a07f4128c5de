"""The three observations as verdicts, on small hand-made tables: each status, and no number below min_n."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drray.evaluate import observations as O


def _rows(spec: list[tuple[int, int, int, int, float]], entropy: float | None = None) -> pd.DataFrame:
    """Rows from (label, pred, n, hits, chance): n images of that (label, pred), `hits` of them on a lesion.

    Grade-0 rows get no lesion columns (nothing to point at), as the explain job writes them.
    """
    rows = []
    for label, pred, n, hits, chance in spec:
        for i in range(n):
            lesion = label >= 1
            rows.append({
                "image_id": f"{label}-{pred}-{i}", "label": label, "pred": pred, "cam_method": "gradcam",
                "pointing_hit": (i < hits) if lesion else None,
                "chance_hit": chance if lesion else np.nan,
                "energy_in_lesions": (0.06 if i < hits else 0.02) if lesion else np.nan,
                "lesion_area": 0.02 if lesion else np.nan,
                "cam_entropy": entropy if entropy is not None else (0.95 if label == 0 else 0.80) + 0.001 * (i % 5),
                "peak_share": 0.01 if label == 0 else 0.05,
            })
    df = pd.DataFrame(rows)
    df["label"] = df["label"].astype("Int64")
    df["pred"] = df["pred"].astype("Int64")
    df["pointing_hit"] = df["pointing_hit"].astype("boolean")
    return df


def _verdicts(df: pd.DataFrame, min_n: int = 10) -> dict[str, dict]:
    return {v["key"]: v for v in O.observations(df, n_boot=100, min_n=min_n)["verdicts"]}


def test_error_bucket_by_grade_distance():
    assert O.error_bucket([0, 2, 4, 4, 1], [0, 3, 0, 3, 3]).tolist() == ["exact", "off_by_one", "gross", "off_by_one",
                                                                         "gross"]


def test_all_three_hold_on_tables_made_for_them():
    df = _rows([(0, 0, 20, 0, 0.0), (2, 2, 30, 27, 0.1), (3, 2, 20, 17, 0.1), (4, 0, 15, 1, 0.1)])
    v = _verdicts(df)
    assert [v[k]["status"] for k in "abc"] == [O.HOLDS] * 3
    a = v["a"]
    assert a["n"] == 20 and a["value"] == pytest.approx(17 / 20) and a["baseline"] == pytest.approx(0.1)
    assert a["ci_low"] > 0.1 and "85%" in a["sentence"] and "20 off-by-one images" in a["sentence"]
    assert v["b"]["value"] == pytest.approx(1 / 15) and v["b"]["baseline"] == pytest.approx(27 / 30)
    assert "15 gross errors" in v["b"]["sentence"] and "30 exact predictions" in v["b"]["sentence"]
    assert v["c"]["value"] > v["c"]["baseline"] and "20 grade-0 maps" in v["c"]["sentence"]


def test_a_does_not_hold_when_off_by_one_peaks_are_at_chance_or_below():
    v = _verdicts(_rows([(2, 3, 20, 2, 0.3)]))
    assert v["a"]["status"] == O.DOES_NOT_HOLD and v["a"]["value"] == pytest.approx(0.1)


def test_a_is_inconclusive_when_the_interval_includes_chance():
    # 6/20 = 30% against 20% chance: above it, but the Wilson interval (15-52%) reaches below.
    v = _verdicts(_rows([(2, 1, 20, 6, 0.2)]))
    assert v["a"]["status"] == O.INCONCLUSIVE and v["a"]["ci_low"] < 0.2 < v["a"]["value"]


def test_b_inconclusive_and_does_not_hold():
    overlap = _verdicts(_rows([(2, 2, 20, 12, 0.1), (4, 1, 20, 9, 0.1)]))
    assert overlap["b"]["status"] == O.INCONCLUSIVE
    reversed_ = _verdicts(_rows([(2, 2, 20, 5, 0.1), (4, 1, 20, 15, 0.1)]))
    assert reversed_["b"]["status"] == O.DOES_NOT_HOLD


def test_c_does_not_hold_when_grade_0_maps_are_the_sharpest():
    df = _rows([(0, 0, 20, 0, 0.0), (2, 2, 20, 15, 0.1)])
    df.loc[df["label"] == 0, "cam_entropy"] = 0.5
    v = _verdicts(df)
    assert v["c"]["status"] == O.DOES_NOT_HOLD and v["c"]["value"] == pytest.approx(0.5)


def test_c_is_inconclusive_when_the_entropy_intervals_overlap():
    df = _rows([(0, 0, 12, 0, 0.0), (2, 2, 12, 9, 0.1)])
    spread = np.linspace(-0.05, 0.05, 12)
    df.loc[df["label"] == 0, "cam_entropy"] = 0.81 + spread  # higher on average, by far less than the spread
    df.loc[df["label"] == 2, "cam_entropy"] = 0.80 + spread
    v = _verdicts(df)
    assert v["c"]["status"] == O.INCONCLUSIVE
    assert v["c"]["value"] == pytest.approx(0.81) and v["c"]["baseline"] == pytest.approx(0.80)


@pytest.mark.parametrize("n", [0, 3, 9])
def test_small_or_empty_buckets_say_so_instead_of_a_number(n):
    df = _rows([(0, 0, 12, 0, 0.0), (2, 2, 20, 18, 0.1), (3, 2, n, n, 0.1), (4, 1, n, 0, 0.1)])
    v = _verdicts(df)
    for key in "ab":
        assert v[key]["status"] == O.TOO_FEW and v[key]["value"] is None
        assert "too few images" in v[key]["sentence"] and f": {n};" in v[key]["sentence"]
        assert "%" not in v[key]["sentence"]
    assert v["c"]["status"] == O.HOLDS  # 12 grade-0 maps and 20 + 2n lesion maps are enough
    # min_n is the caller's: the same 9 images are enough at min_n=5.
    if n == 9:
        assert _verdicts(df, min_n=5)["a"]["status"] != O.TOO_FEW


def test_bucket_figures_count_only_images_with_lesions():
    df = _rows([(0, 1, 7, 0, 0.0), (2, 1, 10, 4, 0.1)])
    b = O.bucket_localisation(df, n_boot=50)
    assert b["off_by_one"]["images"] == 17 and b["off_by_one"]["n"] == 10 and b["off_by_one"]["hits"] == 4
    assert b["off_by_one"]["energy_lift"] == pytest.approx((4 * 0.06 + 6 * 0.02) / 10 / 0.02)
    assert b["exact"]["images"] == 0 and b["exact"]["hit_rate"] is None and b["gross"]["n"] == 0


def test_unlabelled_rows_are_left_out_of_buckets_and_grades():
    df = _rows([(2, 2, 12, 10, 0.1)])
    extra = df.iloc[:5].copy()
    extra["label"] = pd.array([None] * 5, dtype="Int64")
    b = O.bucket_localisation(pd.concat([df, extra], ignore_index=True), n_boot=20)
    assert b["exact"]["n"] == 12
    conc = O.grade_concentration(pd.concat([df, extra], ignore_index=True))
    assert conc["2"]["n"] == 12 and conc["lesion_grades"]["n"] == 12 and conc["0"]["n"] == 0
