"""Strategies: clusters of maps within one predicted class, the place each shares, and the `suspect` rule. Pure numpy.

A model's strategy for a class is how its maps for that class look across many eyes (SpRAy,
Lapuschkin et al. 2019, "Unmasking Clever Hans predictors", clusters relevance maps per class to
find them). drray clusters the 16 x 16 map grids of `drray.scores.descriptors` (the map's mass
over the crop box, left eyes mirrored), square-rooted so that Euclidean distance is the Hellinger
distance between maps read as distributions, projected by PCA and cut by k-means. Both are fitted
on a seeded sample of at most `audit.fit_sample` maps per class and then applied to every row, so
an archive of a million maps needs no million-by-million affinity matrix: the cost is one pass
over the rows, linear in their number. The number of strategies is the k in 2..max_strategies with
the best silhouette on the sample, or one strategy when no split reaches `min_silhouette`.

Two frames: in the fundus frame left eyes are mirrored (the stored `map_grid`), so anatomy lines
up, the optic disc on the right in every eye; in the camera frame every grid is as photographed,
so what the camera puts at one place of the sensor (a notch, a caption, a reflection) lines up.
A camera artefact that falls on the left in both eyes' photographs is two places in the fundus
frame (one per eye) and one in the camera frame; each frame has its own strategies.

The suspect rule, on a strategy's members (every row assigned to it):
- place: the fewest grid cells holding `place_mass` of the strategy's centroid map's excess over
  the mean map of all the method's maps in that frame (what every map shares, such as the frame's
  edge where zero padding meets the image, makes no place);
- one place: those cells cover at most `max_place_area` of the frame and the members put on
  average `min_density` times a uniform map's mass there (mass share / area share);
- shared across many eyes: at least `min_at_place` of the members each put `member_density` times a
  uniform map's mass there, and the strategy holds `min_images` members and `min_share` of its class.
  Lesions fall in different places in different eyes, which spreads a centroid; an artefact, a
  notch or a caption falls in the same place in every photograph;
- not the lesions: where lesion masks exist, the members' median energy lift on lesions
  (energy_in_lesions / lesion_area) stays below `lesion_lift`. The ICDR grade rests on lesions,
  which have no fixed place; no other fixed place (the disc, the rim, the frame) carries the grade.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drray.config.audit import AuditConfig
from drray.scores.descriptors import GRID


FRAMES = ("fundus", "camera")
GROUPINGS = ("grade", "referable")
"""Strategies are found per predicted grade and, separately, for referable vs not referable predictions."""
STRATEGY_COLUMNS = {("fundus", "grade"): "strategy", ("fundus", "referable"): "referable_strategy",
                    ("camera", "grade"): "camera_strategy", ("camera", "referable"): "camera_referable_strategy"}
"""The strategy_of column of each (frame, grouping)."""


def to_frame(grids: np.ndarray, left: np.ndarray, frame: str) -> np.ndarray:
    """(n, G*G) stored grids (fundus frame: left eyes mirrored) -> the grids in `frame`."""
    if frame == "fundus":
        return grids
    if frame != "camera":
        raise ValueError(f"unknown frame {frame!r}; choose one of {', '.join(FRAMES)}")
    out = np.array(grids, dtype=np.float32, copy=True)
    left = np.asarray(left, dtype=bool)
    if left.any():
        g = int(round(np.sqrt(out.shape[1])))
        out[left] = out[left].reshape(-1, g, g)[:, :, ::-1].reshape(left.sum(), -1)
    return out


def features(grids: np.ndarray) -> np.ndarray:
    """(n, G*G) mass grids -> their square roots (Hellinger geometry: Euclidean distance = Hellinger distance)."""
    return np.sqrt(np.clip(np.asarray(grids, dtype=np.float32), 0.0, None))


def place_of(centroid: np.ndarray, mass: float) -> np.ndarray:
    """(G*G,) bool: the fewest cells of a (summing to 1) centroid map that hold `mass` of it."""
    c = np.asarray(centroid, dtype=np.float64).ravel()
    total = c.sum()
    out = np.zeros(c.size, dtype=bool)
    if total <= 0:
        return out
    order = np.argsort(-c, kind="stable")
    cum = np.cumsum(c[order]) / total
    n = int(np.searchsorted(cum, mass - 1e-9) + 1)
    out[order[:n]] = True
    return out


@dataclass
class GroupModel:
    """The fitted strategies of one class: assigns any row of it to one of `k` strategies."""

    k: int
    places: list[np.ndarray]
    """Per strategy, its place: (G*G,) bool over the grid (mirrored frame)."""
    silhouette: float | None = None
    pca: Any = None
    kmeans: Any = None
    fitted_on: int = 0

    def assign(self, grids: np.ndarray) -> np.ndarray:
        """(n, G*G) grids -> (n,) strategy index in 0..k-1."""
        if self.k == 1 or len(grids) == 0:
            return np.zeros(len(grids), dtype=np.int64)
        return self.kmeans.predict(self.pca.transform(features(grids))).astype(np.int64)


def excess_place(centroid: np.ndarray, baseline: np.ndarray | None, mass: float) -> np.ndarray:
    """The place of a centroid: the fewest cells holding `mass` of its excess over `baseline` (the method's mean map)."""
    c = np.asarray(centroid, dtype=np.float64)
    if baseline is not None:
        excess = np.clip(c - np.asarray(baseline, dtype=np.float64), 0.0, None)
        if excess.sum() > 0:
            return place_of(excess, mass)
    return place_of(c, mass)


def fit_group(grids: np.ndarray, cfg: AuditConfig, baseline: np.ndarray | None = None) -> GroupModel:
    """Fit the strategies of one class on a sample of its (n, G*G) grids; `baseline`: the method's mean map."""
    grids = np.asarray(grids, dtype=np.float32)
    n = len(grids)
    # A split whose smallest strategy could not be judged (under half of min_images) only fragments the class.
    min_size = max(2, cfg.min_images // 2)
    ks = [k for k in range(2, cfg.max_strategies + 1) if n >= k * min_size]
    if not ks:
        return GroupModel(1, [excess_place(grids.mean(axis=0), baseline, cfg.place_mass)], fitted_on=n)
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score

    x = features(grids)
    pca = PCA(n_components=min(cfg.pca_dims, n - 1, x.shape[1]), random_state=cfg.seed).fit(x)
    z = pca.transform(x)
    best: tuple[float, int, Any] | None = None
    for k in ks:
        km = MiniBatchKMeans(n_clusters=k, random_state=cfg.seed, n_init=3, batch_size=1024).fit(z)
        labels = km.labels_
        if np.bincount(labels, minlength=k).min() < min_size:
            continue
        s = float(silhouette_score(z, labels, sample_size=min(n, 4000), random_state=cfg.seed))
        if best is None or s > best[0]:
            best = (s, k, km)
    if best is None or best[0] < cfg.min_silhouette:
        return GroupModel(1, [excess_place(grids.mean(axis=0), baseline, cfg.place_mass)],
                          silhouette=None if best is None else best[0], fitted_on=n)
    s, k, km = best
    labels = km.predict(z)
    places = [excess_place(grids[labels == j].mean(axis=0), baseline, cfg.place_mass) if (labels == j).any()
              else np.zeros(grids.shape[1], dtype=bool) for j in range(k)]
    return GroupModel(k, places, silhouette=s, pca=pca, kmeans=km, fitted_on=n)


# ------------------------------------------------------------------------------ tallies
SUMMED = ("correct", "labelled", "referable", "truly_referable", "od_energy", "rim_energy", "outside_energy", "mass_y", "mass_x",
          "mass_spread", "pointing_hit")
"""Per strategy, sums (and counts of non-null values) of these row values; `at_place` and `at_place_mass` too."""


@dataclass
class Tally:
    """Running sums of one strategy's members (or of a whole class): merged across batches, never holding rows."""

    n: int = 0
    grid: np.ndarray = field(default_factory=lambda: np.zeros(GRID * GRID, np.float64))
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    lesion_lifts: list[float] = field(default_factory=list)
    """Energy lifts of members with lesion masks (a few floats per masked image; at most MAX_LIFTS kept)."""

    def add(self, name: str, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        ok = np.isfinite(v)
        self.sums[name] = self.sums.get(name, 0.0) + float(v[ok].sum())
        self.counts[name] = self.counts.get(name, 0) + int(ok.sum())

    def mean(self, name: str) -> float | None:
        c = self.counts.get(name, 0)
        return self.sums[name] / c if c else None


MAX_LIFTS = 100_000


def tally_rows(t: Tally, grids: np.ndarray, cols: dict[str, np.ndarray], place: np.ndarray | None,
               member_density: float) -> None:
    """Add rows (their grids and row values) to a strategy's tally; `place` counts who puts their mass there."""
    t.n += len(grids)
    t.grid += grids.sum(axis=0, dtype=np.float64)
    for name in SUMMED:
        if name in cols:
            t.add(name, cols[name])
    if place is not None:
        share = grids[:, place].sum(axis=1)
        t.add("at_place", (share >= member_density * place.mean() - 1e-9).astype(np.float64))
        t.add("at_place_mass", share)
    lifts = cols.get("lesion_lift")
    if lifts is not None and len(t.lesion_lifts) < MAX_LIFTS:
        v = np.asarray(lifts, dtype=np.float64)
        t.lesion_lifts.extend(v[np.isfinite(v)].tolist()[:MAX_LIFTS - len(t.lesion_lifts)])


@dataclass
class Verdict:
    suspect: bool
    reason: str


def judge(t: Tally, place: np.ndarray, class_n: int, cfg: AuditConfig) -> Verdict:
    """The suspect rule of the module docstring on one strategy's tally."""
    area = float(place.mean())
    at_place = t.mean("at_place") or 0.0
    density = (t.mean("at_place_mass") or 0.0) / area if area > 0 else 0.0
    lifts = np.asarray(t.lesion_lifts)
    if t.n < max(cfg.min_images, cfg.min_share * class_n):
        return Verdict(False, f"too few images to judge ({t.n}; needs {cfg.min_images} and "
                              f"{cfg.min_share:.0%} of the class)")
    if not place.any():
        return Verdict(False, "its maps are empty: they point nowhere")
    if area > cfg.max_place_area:
        return Verdict(False, f"no one place: what sets its maps apart spreads over {area:.1%} of the frame")
    if density < cfg.min_density:
        return Verdict(False, f"its place ({area:.1%} of the frame) holds {density:.1f}x a uniform map's mass, "
                              f"under {cfg.min_density:g}x")
    if at_place < cfg.min_at_place:
        return Verdict(False, f"its place ({area:.1%} of the frame) is shared by only {at_place:.0%} of its maps")
    if lifts.size >= 5 and float(np.median(lifts)) >= cfg.lesion_lift:
        return Verdict(False, f"a shared place, but on the lesions (median lift {np.median(lifts):.1f} "
                              f"over {lifts.size} masked images)")
    return Verdict(True, f"{at_place:.0%} of {t.n} maps share one place covering {area:.1%} of the frame, "
                         f"at {density:.1f}x a uniform map's mass" + (
                             f"; off the lesions (median lift {np.median(lifts):.1f})" if lifts.size >= 5
                             else "; no lesion masks to exempt it"))


def place_centre(place: np.ndarray, grid: int = GRID) -> tuple[float, float]:
    """(y, x) of a place's cells in units of the crop box's half side from its centre (mirrored frame)."""
    ys, xs = np.divmod(np.flatnonzero(place), grid)
    if ys.size == 0:
        return 0.0, 0.0
    half = grid / 2.0
    return float(((ys + 0.5).mean() - half) / half), float(((xs + 0.5).mean() - half) / half)


def place_name(t: Tally, place: np.ndarray, frame: str = "fundus", grid: int = GRID) -> str:
    """Where a place is in words: outside the field, on its rim, on the disc, or a part of the retina.

    In the fundus frame sides are anatomical (nasal: towards the disc); in the camera frame they are
    the photograph's (left / right as it is displayed)."""
    y, x = place_centre(place, grid)
    right, left = ("nasal", "temporal") if frame == "fundus" else ("right", "left")
    where = ("upper" if y < -0.25 else "lower" if y > 0.25 else "") + (
        f" {right}" if x > 0.25 else f" {left}" if x < -0.25 else "")
    where = where.strip() or "central"
    if (t.mean("outside_energy") or 0.0) >= 0.5:
        return f"outside the field, {where}"
    if (t.mean("rim_energy") or 0.0) >= 0.5:
        return f"field rim, {where}"
    if (t.mean("od_energy") or 0.0) >= 0.5:
        return "optic disc"
    return f"retina, {where}"


def control_place(place: np.ndarray, grid: int = GRID) -> np.ndarray:
    """A place of the same size elsewhere: the place turned 180 degrees about the frame's centre (90 or 270 when that
    overlaps it by more than a tenth), so it lies as far from the centre: in the field when the place is."""
    p = place.reshape(grid, grid)
    best = None
    for turns in (2, 1, 3):
        q = np.rot90(p, turns)
        overlap = float((q & p).sum()) / max(int(p.sum()), 1)
        if overlap <= 0.1:
            return q.ravel()
        if best is None or overlap < best[0]:
            best = (overlap, q)
    return best[1].ravel()
