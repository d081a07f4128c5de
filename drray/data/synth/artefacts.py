"""Shortcuts on purpose: artefacts stamped on synthetic photographs so that an audit has something to find.

    marked = mark_shortcut("runs/x/manifest.parquet", "notch", seed=0)   # after drray ingest

`mark_shortcut` stamps the artefact on every referable (grade >= 2) training and validation
photograph and on a random half of the test photographs, whatever their grade, as a clinic's
camera or a burnt-in caption correlates with the grades of the patients photographed there. A
model trained on the marked set can reach its grades through the artefact; `drray audit` should
find a strategy at its place and confirm it by removing it.

Kinds (places in shares of the photograph's side; the synthetic field of view is a circle of
radius 0.43-0.48 about the centre, so each sits inside the part Ben Graham's normalisation keeps):
- `notch`: a bright square at the upper right of the field, as a camera's orientation notch;
- `caption`: white burnt-in text across the lower left;
- `reflection`: a bright, soft ellipse above the fovea, as a flash reflex;
- `dark_edge`: a dark crescent along the field's left edge, as a lid or a vignette;
- `hidden`: a polygon whose shape, size, colour and place come from the seed alone, so a test can
  check the audit on an artefact nothing in drray knows.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

KINDS = ("notch", "caption", "reflection", "dark_edge", "hidden")


def _notch(img: np.ndarray, rng: np.random.Generator) -> None:
    import cv2

    s = img.shape[0]
    c, h = np.array([0.5 - 0.25, 0.5 + 0.25]) * s, 0.035 * s
    cv2.rectangle(img, (int(c[1] - h), int(c[0] - h)), (int(c[1] + h), int(c[0] + h)), (250, 250, 250), -1)


def _caption(img: np.ndarray, rng: np.random.Generator) -> None:
    import cv2

    s = img.shape[0]
    cv2.putText(img, "OD 14", (int(0.24 * s), int(0.76 * s)), cv2.FONT_HERSHEY_SIMPLEX, s / 300.0,
                (255, 255, 255), max(1, s // 128), cv2.LINE_AA)


def _reflection(img: np.ndarray, rng: np.random.Generator) -> None:
    import cv2

    s = img.shape[0]
    layer = np.zeros(img.shape[:2], np.float32)
    cv2.ellipse(layer, (int(0.42 * s), int(0.32 * s)), (int(0.06 * s), int(0.035 * s)), 20, 0, 360, 1.0, -1)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.012 * s)
    img[:] = np.clip(img + layer[..., None] * 200.0, 0, 255).astype(np.uint8)


def _dark_edge(img: np.ndarray, rng: np.random.Generator) -> None:
    s = img.shape[0]
    yy, xx = np.mgrid[:s, :s] / s
    # The field's left edge: inside the field, outside the same circle moved right by 0.08 of the side.
    crescent = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 <= 0.42 ** 2) & ((xx - 0.58) ** 2 + (yy - 0.5) ** 2 > 0.42 ** 2)
    img[crescent] = (img[crescent] * 0.2).astype(np.uint8)


def _hidden(img: np.ndarray, rng: np.random.Generator) -> None:
    import cv2

    s = img.shape[0]
    angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.28)
    cy, cx = 0.5 + radius * np.sin(angle), 0.5 + radius * np.cos(angle)
    size = rng.uniform(0.04, 0.08)
    n = int(rng.integers(3, 8))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    pts = np.stack([cx + size * rng.uniform(0.5, 1.0, n) * np.cos(t), cy + size * rng.uniform(0.5, 1.0, n) * np.sin(t)],
                   axis=1) * s
    colour = tuple(int(v) for v in (rng.uniform(200, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 40, 3)))
    cv2.fillPoly(img, [pts.astype(np.int32)], colour, cv2.LINE_AA)


STAMPS: dict[str, Callable[[np.ndarray, np.random.Generator], None]] = {
    "notch": _notch, "caption": _caption, "reflection": _reflection, "dark_edge": _dark_edge, "hidden": _hidden,
}


def stamp(image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 photograph with the artefact `kind` on it (`hidden`: drawn from `seed`).

    The artefact is the same in every photograph stamped with one seed: a shortcut is a fixed cue.
    """
    if kind not in STAMPS:
        raise ValueError(f"unknown artefact {kind!r}; choose one of {', '.join(KINDS)}")
    img = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).copy())
    STAMPS[kind](img, np.random.default_rng(seed))
    return img


def mark_shortcut(manifest: str, kind: str, *, seed: int = 0, test_share: float = 0.5, quality: int = 95):
    """Stamp `kind` on the referable train / val photographs of an ingested synthetic set and a random share of its
    test photographs, rewriting the JPEGs in place. Returns the manifest rows with a `marked` column."""
    from PIL import Image

    from drray.data.dataset import load_manifest, manifest_base_dir
    from drray.storage import resolve_path

    if not 0 <= test_share <= 1:
        raise ValueError(f"test_share must be in [0, 1], got {test_share}")
    df = load_manifest(manifest)
    base = manifest_base_dir(manifest)
    rng = np.random.default_rng(seed + 1)
    test = df["split"].eq("test").to_numpy()
    marked = np.where(test, rng.random(len(df)) < test_share,
                      df["split"].isin(["train", "val"]).to_numpy() & (df["label"].fillna(-1).to_numpy() >= 2))
    for path in df.loc[marked, "path"]:
        where = resolve_path(str(path), base)
        with Image.open(where) as im:
            rgb = np.asarray(im.convert("RGB"))
        out = io.BytesIO()
        Image.fromarray(stamp(rgb, kind, seed)).save(out, format="JPEG", quality=quality)
        with open(where, "wb") as f:
            f.write(out.getvalue())
    return df.assign(marked=marked)
