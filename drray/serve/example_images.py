"""The example photographs of the page, shipped with the package under drray/serve/examples/.

One real photograph (scikit-image's `skimage.data.retina()`, a colour fundus image from
Wikimedia Commons, CC0) and a few procedural ones (drray.data.synth.render) of different grades.
`write_examples` regenerates them (`python -m drray.serve.example_images`); the files are small
JPEGs so the wheel stays light.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).parent / "examples"
RETINA = "retina_skimage.jpg"
SYNTH_SIZE = 384
SYNTH_SEED = 7
SYNTH_GRADES = (0, 2, 4)
"""Grades of the synthetic examples: none, moderate (referable), proliferative."""


def example_paths() -> list[Path]:
    """The shipped examples, the real photograph first."""
    found = sorted(EXAMPLES_DIR.glob("*.jpg"), key=lambda p: (p.name != RETINA, p.name))
    if not found:
        raise FileNotFoundError(f"no example photographs in {EXAMPLES_DIR}; run python -m drray.serve.example_images")
    return found


def write_examples(out: str | Path = EXAMPLES_DIR, quality: int = 88) -> list[Path]:
    """Write the real photograph and one synthetic photograph per grade in SYNTH_GRADES as JPEGs."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from drray.config import SynthConfig
    from drray.data.synth.render import render

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    retina = Image.fromarray(np.asarray(skimage.data.retina())[..., :3])
    retina.thumbnail((768, 768), Image.Resampling.LANCZOS)
    retina.save(out / RETINA, quality=quality)
    written.append(out / RETINA)
    cfg = SynthConfig(n=64, size=SYNTH_SIZE, seed=SYNTH_SEED)
    wanted = list(SYNTH_GRADES)
    for index in range(cfg.n):
        if not wanted:
            break
        img = render(cfg.seed, index, cfg)
        if img.grade in wanted:
            wanted.remove(img.grade)
            path = out / f"synth_grade{img.grade}.jpg"
            Image.fromarray(img.image).save(path, quality=quality)
            written.append(path)
    return written


if __name__ == "__main__":
    for p in write_examples():
        print(p)
