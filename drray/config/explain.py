"""Sections `cam:` and `explain:`: what a map is, and how the batch job that makes them runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from drray.config.checks import check


@dataclass
class CamConfig:
    """What a map is: the method, what it explains, the layer it is computed at, and how a row stores and scores it.

    The same settings make a map in `drray explain`, the randomisation check, layer selection and
    serving (the predictor's `cam`); how the batch job runs them is `ExplainConfig`.
    """

    methods: list[str] | None = None
    """CAM methods per image; None: the one chosen for the model (its card's `cam_method`, written by
    layer selection), else gradcam; an empty list predicts only."""
    target: str = "pred"
    """`pred` (predicted grade), `referable`, `score` (ordinal), or a grade 0-4."""
    target_layer: str | None = None
    """Dotted module name of the CAM target layer (e.g. `backbone.layer2`), or several joined by `+` for a fused
    map (`layer2+layer3`: the layers' maps multiplied); None: by stride or the model card."""
    target_stride: int | None = None
    """Output stride of the CAM target layer: 8, 16 or 32 (finer maps land on smaller lesions); None: the model
    card's layer, else drray's default: strides 8 and 16 fused (drray.cam.target_layers.DEFAULT_FUSED_STRIDES)."""
    cam_size: int = 32
    """Side of the low-resolution map stored per row."""
    overlay_size: int = 128
    """Side of the overlay thumbnail stored per row."""
    pointing_tolerance: float = 0.02
    """Pointing-game tolerance as a share of the image side."""
    faithfulness: bool = False
    """Also score each map by deletion, insertion and ROAD (drray.cam.faithfulness): several extra forwards per map."""

    def __post_init__(self) -> None:
        check(self.target_stride is None or (not isinstance(self.target_stride, bool)
                                              and self.target_stride in (8, 16, 32)),
               f"cam.target_stride must be 8, 16, 32 or null, got {self.target_stride!r}")
        check(self.target_layer is None or self.target_stride is None,
               f"cam.target_layer ({self.target_layer!r}) and cam.target_stride ({self.target_stride}) are both set; "
               "set one: a layer name, or a stride to pick the layer by")
        if isinstance(self.methods, str):
            self.methods = [m.strip() for m in self.methods.split(",") if m.strip()]
        if self.methods is not None:
            self.methods = list(self.methods)
        check(self.cam_size >= 1, f"cam.cam_size must be >= 1, got {self.cam_size}")
        check(self.overlay_size >= 8, f"cam.overlay_size must be >= 8 pixels, got {self.overlay_size}")
        check(0 <= self.pointing_tolerance < 1,
               f"cam.pointing_tolerance is a share of the image side in [0, 1), got {self.pointing_tolerance}")


@dataclass
class ExplainConfig:
    """How `drray explain` runs: the actor pool, the model-randomisation check, and the choice of layer and method."""

    batch_size: int = 16
    """Images per model call, in the explain actors and in layer selection."""
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    torch_threads: int | None = None
    """Torch intra-op threads per explain actor; None keeps Ray's setting (the actor's whole CPUs). More
    threads than CPUs lets the model use cores that decode tasks leave idle."""
    actor_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each explain actor needs, e.g. {"explainer": 1} to run them on nodes started
    with `ray start --resources='{"explainer": 1}'` only."""
    sanity_images: int = 64
    """Images of the model-randomisation check `drray explain` runs after the maps (Adebayo et al. 2018:
    the same images explained with the top blocks re-initialised, into randomisation.parquet); 0 turns it off."""
    sanity_draws: int = 5
    """Random re-initialisations per step of the randomisation check, averaged: a single random network's
    pointing score swings with its seed, so several draws are needed to estimate what random weights
    score (benchmarks/README.md measures the spread on the demo model)."""
    select_layer: bool = True
    """`drray tune` (and `drray explain --select-layer`) choose the target layer and method by the pointing
    game on `select_split`, where it has lesion masks, and write them into the model card
    (drray.explain.select_layer); without masks the card keeps the default stride."""
    select_split: str = "val"
    select_fused: bool = True
    """Layer selection also tries each pair of neighbouring strides fused (`layer2+layer3`: maps multiplied)."""
    select_methods: list[str] = field(default_factory=lambda: ["gradcam", "xgradcam", "gradcam++", "hirescam",
                                                               "layercam"])
    """Fast methods layer selection compares."""

    def __post_init__(self) -> None:
        if isinstance(self.select_methods, str):
            self.select_methods = [m.strip() for m in self.select_methods.split(",") if m.strip()]
        check(len(self.select_methods) > 0, "explain.select_methods is empty; name at least one fast CAM method")
        check(self.sanity_draws >= 1, f"explain.sanity_draws must be >= 1, got {self.sanity_draws}")
        check(self.sanity_images >= 0,
               f"explain.sanity_images must be >= 0 (0: no randomisation check), got {self.sanity_images}")
        check(self.batch_size >= 1, f"explain.batch_size must be >= 1, got {self.batch_size}")
        check(self.num_actors >= 1, f"explain.num_actors must be >= 1, got {self.num_actors}")
        check(self.cpus_per_actor >= 0 and self.gpus_per_actor >= 0,
               "explain.cpus_per_actor and explain.gpus_per_actor must be >= 0")
        check(self.torch_threads is None or self.torch_threads >= 1,
               f"explain.torch_threads must be >= 1 or null, got {self.torch_threads}")
