"""Procedural colour fundus photographs with pixel masks for every lesion type: drray's embedded dataset.

    from drray.config import SynthConfig
    from drray.data.synth import render, generate
    im = render(seed=0, index=7, cfg=SynthConfig(size=512))   # SynthImage: image, masks, grade, ...
    generate(SynthConfig(n=1000, size=256), "runs/demo/synth")  # -> runs/demo/synth/labels.csv

Each photograph is a circular field of view on black: an orange-red fundus with illumination
fall-off, a branching artery/vein tree leaving the optic disc, a darker macula and fovea, left
and right eyes (the disc on the nasal side), random colour balance, exposure, gamma, defocus,
noise and JPEG quality, and in ~10% a field cut off at top and bottom as in APTOS 2019.
Lesions follow the ICDR grade (grading.py): microaneurysms `ma`, haemorrhages `he` (dot/blot,
flame, pre-retinal), hard exudates `ex`, cotton-wool spots `se`, neovascularisation `nv`, each
with its own mask, plus the optic disc `od`.

Sizes follow anatomy relative to the field-of-view diameter D (disc ~15% of D; haemorrhages,
exudates, cotton-wool spots in their real ranges, see lesions.py), so grading stays as hard as on
photographs. One deliberate choice for learnability: microaneurysms are drawn at 0.6-1% of D,
the upper part of the real 0.3-1%, with a dark-red core, so at 256 px (D = 220-246 px) they span
1.3-2.5 px and a grade-1 image keeps visible evidence after resizing.

Deterministic: `default_rng([seed, index])` drives image `index` (and `default_rng([seed, k, ...])`
the traits patient k's two eyes share), so the same (seed, index, size, balance) gives the same
bytes whatever n is and however the work is split.

Modules: patient (ids, eyes, shared traits), grading (ICDR rules), anatomy (geometry, background,
disc), vessels (the tree), lesions (placement, painting, masks), photometry (camera),
render (one image), generate (files, Ray).
"""

from drray.data.synth.generate import PARALLEL_MIN_N, encode, generate, image_id
from drray.data.synth.render import SynthImage, render

__all__ = ["SynthImage", "render", "generate", "encode", "image_id", "PARALLEL_MIN_N"]
