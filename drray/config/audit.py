"""Section `audit:`: how `drray audit` finds the strategies a model's maps reveal, judges them and confirms a shortcut."""

from __future__ import annotations

from dataclasses import dataclass

from drray.config.checks import check

INTERVENTIONS = ("inpaint", "blur")


@dataclass
class AuditConfig:
    """Strategies (clusters of maps per predicted class, in the fundus and the camera frame), the `suspect` rule, and
    the intervention that confirms it.

    The rule's numbers are stated in README ("What the model looks at") and stored with every
    strategies.parquet row, so a reader can tell what a verdict meant.
    """

    max_strategies: int = 6
    """Most clusters tried per class; the number is chosen by silhouette on the fitting sample (1 when no split helps)."""
    min_silhouette: float = 0.1
    """A class splits into strategies only when the best split's silhouette reaches this."""
    fit_sample: int = 20_000
    """Maps per class the clustering is fitted on (a seeded reservoir sample); every map is then assigned on Ray."""
    pca_dims: int = 12
    """Dimensions the (square-rooted) 16 x 16 map grids are projected to before k-means."""
    min_images: int = 10
    """A strategy is judged only when it holds this many images (and `min_share` of its class): a place shared by
    a handful of eyes proves nothing."""
    min_share: float = 0.05
    place_mass: float = 0.5
    """A strategy's place: the fewest grid cells holding this share of its centroid map's excess over the mean map of
    all the method's maps (so what every map shares, such as the frame's edge, does not make a place)."""
    max_place_area: float = 0.06
    """... is one place when those cells cover at most this share of the frame (15 of the 256 cells: lesions in
    different eyes spread a centroid far wider)."""
    min_density: float = 6.0
    """... and the members' maps put on average this many times the mass a uniform map would put there."""
    member_density: float = 3.0
    """A member is at the place when its own map puts this many times a uniform map's mass there ..."""
    min_at_place: float = 0.5
    """... and a strategy is one shared place when at least this share of its members are."""
    lesion_lift: float = 3.0
    """Where lesion masks exist: a place the members' maps share is on the lesions, not a shortcut, when their
    median energy_in_lesions / lesion_area reaches this."""
    intervention: str = "inpaint"
    """How a suspect place is removed for the confirmation: `inpaint` (from the surrounding pixels) or `blur`."""
    confirm_min_change: float = 0.1
    """A suspect strategy is confirmed when removing its place changes at least this share of its predictions
    more than removing a control place of the same size elsewhere does ..."""
    confirm_ratio: float = 2.0
    """... and at least this many times as often."""
    max_intervention_images: int | None = None
    """Cap on the images predicted again per suspect strategy (None: all of them)."""
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check(1 <= self.max_strategies <= 32, f"audit.max_strategies must be in 1..32, got {self.max_strategies}")
        check(self.fit_sample >= 10, f"audit.fit_sample must be >= 10, got {self.fit_sample}")
        check(1 <= self.pca_dims <= 256, f"audit.pca_dims must be in 1..256, got {self.pca_dims}")
        check(self.min_images >= 2, f"audit.min_images must be >= 2, got {self.min_images}")
        check(self.min_density >= 1 and self.member_density >= 1, "audit.min_density and audit.member_density must be "
              ">= 1 (a uniform map's density)")
        for name in ("min_share", "place_mass", "max_place_area", "min_at_place", "confirm_min_change"):
            value = getattr(self, name)
            check(0 <= value <= 1, f"audit.{name} must be in [0, 1], got {value}")
        check(self.intervention in INTERVENTIONS,
              f"audit.intervention must be one of {', '.join(INTERVENTIONS)}, got {self.intervention!r}")
        check(self.confirm_ratio >= 1, f"audit.confirm_ratio must be >= 1, got {self.confirm_ratio}")
        check(self.max_intervention_images is None or self.max_intervention_images >= 1,
              "audit.max_intervention_images must be >= 1 or null")
        check(self.batch_size >= 1, f"audit.batch_size must be >= 1, got {self.batch_size}")
