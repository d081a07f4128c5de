"""Sections `synth:` and `data:` (with `data.preprocess`): the synthetic set, where images are and how they are read."""

from __future__ import annotations

from dataclasses import dataclass, field

from drray.config.checks import check
from drray.rundir import DEFAULT
from drray.schema import NUM_GRADES


@dataclass
class SynthConfig:
    """Procedural fundus set."""

    n: int = 200
    """Number of images."""
    size: int = 512
    """Side of the square photograph, in pixels."""
    seed: int = 0
    """Same seed, same bytes."""
    class_balance: tuple[float, ...] = (0.49, 0.10, 0.27, 0.05, 0.08)
    """Share of grades 0-4 (default near APTOS 2019)."""
    patients_share_eyes: bool = True
    """Pair consecutive images as the left and right eye of one patient."""

    def __post_init__(self) -> None:
        self.class_balance = tuple(float(x) for x in self.class_balance)
        check(self.n >= 1, f"synth.n must be >= 1, got {self.n}")
        check(self.size >= 32, f"synth.size must be >= 32 pixels, got {self.size}")
        check(len(self.class_balance) == NUM_GRADES,
               f"synth.class_balance needs {NUM_GRADES} shares (grades 0-4), got {len(self.class_balance)}")
        check(all(x >= 0 for x in self.class_balance) and sum(self.class_balance) > 0,
               f"synth.class_balance must be non-negative with a positive sum, got {self.class_balance}")


@dataclass
class PreprocessConfig:
    """Fundus crop, optional Ben Graham normalisation, resize. Stored in every model dir."""

    image_size: int = 224
    """Side of the square network input."""
    crop: bool = True
    """Crop to the fundus circle (pad to a square) before resizing."""
    ben_graham: bool = False
    """Subtract the local average colour (Ben Graham, Kaggle DR 2015) and blank the rim."""
    ben_graham_sigma_frac: float = 1.0 / 60.0
    """Gaussian sigma as a share of the image side (Ben Graham's radius/30 on a crop to the circle)."""

    def __post_init__(self) -> None:
        check(16 <= self.image_size <= 2048, f"image_size must be in 16..2048, got {self.image_size}")
        check(self.ben_graham_sigma_frac > 0, "ben_graham_sigma_frac must be > 0")


@dataclass
class DataConfig:
    """Where the images are and how they are read."""

    manifest: str = DEFAULT.manifest
    """Manifest written by `drray ingest`."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    seed: int = 0
    """Seed of the patient-level split."""
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    """train/val/test shares for sources without an official split."""
    max_image_pixels: int = 64_000_000
    """Images larger than this are refused (decompression-bomb guard), in every stage alike."""
    decode_cpus: float = 0.5
    """CPUs per Ray Data decode task (training, explanation, evaluation): below 1 so decode tasks fit
    beside the model's actors and workers on small machines."""

    def __post_init__(self) -> None:
        if isinstance(self.preprocess, dict):
            self.preprocess = PreprocessConfig(**self.preprocess)
        self.split_fractions = tuple(float(x) for x in self.split_fractions)
        check(len(self.split_fractions) == 3 and abs(sum(self.split_fractions) - 1) < 1e-6,
               f"data.split_fractions must be three shares summing to 1, got {self.split_fractions}")
        check(self.max_image_pixels > 0, "data.max_image_pixels must be > 0")
        check(self.decode_cpus > 0, f"data.decode_cpus must be > 0, got {self.decode_cpus}")
