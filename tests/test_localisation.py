"""Localisation scores on small hand-made maps and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from drray.scores.localisation import (
    chance_hit_rate,
    energy_share,
    entropy,
    ideal_energy_share,
    lesion_area_share,
    lesions_on_grid,
    mass,
    peak,
    pointing_hit,
    rank_correlation,
)

pytestmark = pytest.mark.timeout(30)


def blob(h: int, w: int, y: int, x: int) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[y, x] = 1.0
    return m


def test_peak_is_argmax_row_then_column():
    cam = np.zeros((4, 6), np.float32)
    cam[2, 5] = 0.9
    cam[1, 3] = 0.3
    assert peak(cam) == (2, 5)


def test_peak_ties_take_first_in_row_major_order():
    cam = np.zeros((3, 3), np.float32)
    cam[2, 0] = cam[0, 2] = 1.0
    assert peak(cam) == (0, 2)


def test_peak_of_empty_map_is_none():
    assert peak(np.zeros((5, 5))) is None


def test_peak_rejects_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        peak(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        peak(np.zeros((2, 2, 3)))


def test_entropy_bounds_sharp_uniform_and_half():
    assert entropy(blob(8, 8, 3, 3)) == pytest.approx(0.0, abs=1e-12)
    assert entropy(np.full((8, 8), 0.5)) == pytest.approx(1.0)
    half = np.zeros((8, 8))
    half[:4] = 1.0  # uniform on 32 of 64 pixels: log(32) / log(64)
    assert entropy(half) == pytest.approx(math.log(32) / math.log(64))


def test_entropy_is_scale_invariant_and_nan_when_empty():
    rng = np.random.default_rng(0)
    cam = rng.random((7, 9))
    assert entropy(cam) == pytest.approx(entropy(cam * 0.1))
    assert 0.0 < entropy(cam) < 1.0
    assert math.isnan(entropy(np.zeros((4, 4))))
    assert entropy(np.ones((1, 1))) == 0.0


def test_pointing_hit_inside_and_outside_mask():
    cam = blob(10, 10, 2, 2)
    mask = np.zeros((10, 10), bool)
    mask[2, 2] = True
    assert pointing_hit(cam, mask)
    mask[:] = False
    mask[8, 8] = True
    assert not pointing_hit(cam, mask)


def test_pointing_hit_tolerance_is_a_disc():
    cam = blob(20, 20, 10, 10)
    mask = np.zeros((20, 20), bool)
    mask[10, 13] = True  # 3 px to the right
    assert not pointing_hit(cam, mask, tolerance_px=2.9)
    assert pointing_hit(cam, mask, tolerance_px=3.0)
    mask[:] = False
    mask[13, 13] = True  # diagonal: distance sqrt(18) ~ 4.24, inside the 4-px square but outside the disc
    assert not pointing_hit(cam, mask, tolerance_px=4.0)
    assert pointing_hit(cam, mask, tolerance_px=4.25)


def test_pointing_hit_near_the_border_and_for_empty_inputs():
    cam = blob(6, 6, 0, 5)
    mask = np.zeros((6, 6), bool)
    mask[1, 4] = True
    assert pointing_hit(cam, mask, tolerance_px=1.5)
    assert not pointing_hit(cam, np.zeros((6, 6), bool), tolerance_px=3)
    assert not pointing_hit(np.zeros((6, 6)), mask, tolerance_px=3)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_hit(cam, mask, tolerance_px=-1)


def test_energy_share_definition():
    cam = np.array([[1.0, 3.0], [0.0, 4.0]])
    mask = np.array([[True, False], [False, True]])
    assert energy_share(cam, mask) == pytest.approx(5.0 / 8.0)
    assert energy_share(cam, np.ones((2, 2), bool)) == pytest.approx(1.0)
    assert energy_share(cam, np.zeros((2, 2), bool)) == 0.0
    assert math.isnan(energy_share(np.zeros((2, 2)), mask))


def test_energy_share_of_uniform_map_is_mask_area():
    rng = np.random.default_rng(1)
    mask = rng.random((16, 16)) < 0.3
    assert energy_share(np.ones((16, 16)), mask) == pytest.approx(mask.mean())


def test_mask_must_match_map_shape():
    with pytest.raises(ValueError, match="resize the map"):
        energy_share(np.ones((4, 4)), np.ones((8, 8), bool))


def test_negative_rounding_noise_counts_as_zero():
    cam = np.array([[-1e-6, 1.0]])
    assert mass(cam) == pytest.approx(1.0)
    assert energy_share(cam, np.array([[False, True]])) == pytest.approx(1.0)


def centre_lesion(h: int = 5, w: int = 5) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[h // 2, w // 2] = True
    return m


def test_chance_hit_rate_counts_field_pixels_within_the_tolerance_disc():
    lesion, field = centre_lesion(), np.ones((5, 5), bool)
    assert chance_hit_rate(lesion, field, 0) == pytest.approx(1 / 25)  # the lesion pixel itself
    assert chance_hit_rate(lesion, field, 1) == pytest.approx(5 / 25)  # + its 4 neighbours
    assert chance_hit_rate(lesion, field, 1.5) == pytest.approx(9 / 25)  # + the diagonals, sqrt(2) <= 1.5
    assert chance_hit_rate(lesion, field, 2) == pytest.approx(13 / 25)  # + the 4 at distance 2 (not sqrt 5)


def test_chance_hit_rate_only_over_the_field_with_lesions_anywhere():
    lesion = centre_lesion()
    field = np.zeros((5, 5), bool)
    field[:, :2] = True  # the two left columns: 10 pixels, the lesion outside them
    assert chance_hit_rate(lesion, field, 1) == pytest.approx(1 / 10)  # only (2, 1)
    assert chance_hit_rate(lesion, field, 0.5) == 0.0
    assert chance_hit_rate(np.zeros((5, 5), bool), field, 3) == 0.0  # no lesion: every peak misses
    assert math.isnan(chance_hit_rate(lesion, np.zeros((5, 5), bool), 3))
    with pytest.raises(ValueError, match="tolerance"):
        chance_hit_rate(lesion, field, -1)
    with pytest.raises(ValueError, match="one shape"):
        chance_hit_rate(lesion, np.ones((4, 5), bool), 1)


def test_chance_hit_rate_equals_the_pointing_game_of_every_possible_peak():
    rng = np.random.default_rng(3)
    lesions = rng.random((12, 14)) < 0.04
    yy, xx = np.mgrid[:12, :14]
    field = (yy - 6) ** 2 + (xx - 7) ** 2 <= 30
    for tol in (0.0, 1.0, 2.3, 3.84):
        hits = [pointing_hit(blob(12, 14, y, x), lesions, tol) for y, x in zip(*np.nonzero(field))]
        assert chance_hit_rate(lesions, field, tol) == pytest.approx(np.mean(hits))


def test_lesion_area_share_is_lesion_pixels_inside_the_field_over_the_field():
    field = np.ones((4, 4), bool)
    field[0] = False  # 12 pixels
    lesions = np.zeros((4, 4), bool)
    lesions[0, 0] = lesions[1, 1] = lesions[3, 2] = True  # one of them outside the field
    assert lesion_area_share(lesions, field) == pytest.approx(2 / 12)
    assert energy_share(np.where(field, 1.0, 0.0), lesions & field) == pytest.approx(lesion_area_share(lesions, field))
    assert math.isnan(lesion_area_share(lesions, np.zeros((4, 4), bool)))


def test_lesions_on_grid_is_cell_shares_upsampled_as_a_cam_is():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    lesions = rng.random((64, 48)) < 0.03
    drawn = lesions_on_grid(lesions, 8)
    cells = F.avg_pool2d(torch.from_numpy(lesions.astype(np.float32))[None], 8)  # (1, 8, 6): each cell's share
    # The interpolation drray.cam.maps.upsample_maps runs on a CAM (before rescaling it to [0, 1]).
    as_cam = F.interpolate(cells[None], size=(64, 48), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(drawn, as_cam, atol=1e-6)
    np.testing.assert_array_equal(lesions_on_grid(lesions, 1), lesions.astype(float))  # one cell per pixel
    assert lesions_on_grid(lesions, 64) == pytest.approx(np.full((64, 48), lesions.mean()))  # one cell
    assert lesions_on_grid(rng.random((50, 50)) < 0.1, 16).shape == (50, 50)  # 4 x 4 cells, fractional edges


def test_ideal_energy_share_falls_from_one_to_the_area_share_as_the_grid_coarsens():
    lesions = np.zeros((64, 64), bool)
    lesions[20:23, 40:43] = True  # a 3-px microaneurysm
    field = np.ones_like(lesions)
    shares = [ideal_energy_share(lesions, field, s) for s in (1, 2, 4, 8, 16, 32, 64)]
    assert shares[0] == 1.0
    assert all(a > b for a, b in zip(shares, shares[1:]))
    assert shares[-1] == pytest.approx(lesion_area_share(lesions, field))  # one cell: a uniform map
    # Only the field counts: the part of the blob past its edge carries no mass.
    half = np.ones_like(field)
    half[:, 42:] = False
    assert ideal_energy_share(lesions, half, 8) > shares[3]


def test_ideal_energy_share_needs_lesions_a_field_and_a_stride():
    field = np.ones((16, 16), bool)
    assert math.isnan(ideal_energy_share(np.zeros_like(field), field, 8))
    lesions = np.zeros_like(field)
    lesions[3, 3] = True
    assert math.isnan(ideal_energy_share(lesions, np.zeros_like(field), 8))
    for bad in (0, -8, 2.5):
        with pytest.raises(ValueError, match="stride"):
            ideal_energy_share(lesions, field, bad)
    with pytest.raises(ValueError, match="one shape"):
        ideal_energy_share(lesions, field[:8], 8)


def test_rank_correlation_is_spearman_with_mean_ranks_for_ties():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert rank_correlation(a, a * 10) == pytest.approx(1.0)
    assert rank_correlation(a, a ** 3) == pytest.approx(1.0)  # any increasing transform
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    # ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert rank_correlation(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(3 / math.sqrt(10))
    assert math.isnan(rank_correlation(np.ones((2, 2)), a))
    with pytest.raises(ValueError, match="one shape"):
        rank_correlation(a, np.ones((3, 3)))
