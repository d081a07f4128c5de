"""EyePACS, Kaggle Diabetic Retinopathy Detection 2015.

Layout: `trainLabels.csv` (image,level) with `train/{image}.jpeg`; optionally the published
test grades `retinopathy_solution.csv` (image,level,Usage) with `test/{image}.jpeg`.

- Official split kept: train rows "train" (val is carved from them by patient), solution rows
  "test" (both Public and Private usage).
- Names are `{patient}_{left|right}`: `10_left` -> patient "10", eye "left".
- Without the solution file the test images are not ingested (they have no grades).
- An image name is a file stem: one with path parts (`../test/1_left`) is a bad_image_id errors
  row, never a file read from another folder or split.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterator

from drray.data.sources import register
from drray.data.sources.base import Candidate, Problem, relative, rows_naming_images

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<patient>.+)_(?P<eye>left|right)$", re.IGNORECASE)

_PARTS = (("trainLabels.csv", "train", "train"), ("retinopathy_solution.csv", "test", "test"))


def parse_name(name: str) -> tuple[str, str | None]:
    """`10_left` -> ("10", "left"); a name without the eye suffix is its own patient."""
    m = _NAME.match(name)
    return (m["patient"], m["eye"].lower()) if m else (name, None)


@register(
    "eyepacs2015",
    looked_for="trainLabels.csv (image,level) with train/{image}.jpeg, optionally retinopathy_solution.csv with test/",
)
def scan(root: Path, **_options) -> Iterator[Candidate | Problem]:
    if (root / "test").is_dir() and not (root / "retinopathy_solution.csv").is_file():
        log.warning("%s: test/ is skipped: its grades (retinopathy_solution.csv) are not in the root", root)
    for csv_name, folder, split in _PARTS:
        table = root / csv_name
        if not table.is_file():
            continue
        for rec in rows_naming_images(root, table, folder, "image", ["image", "level"], ".jpeg"):
            if isinstance(rec, Problem):
                yield rec
                continue
            patient, eye = parse_name(rec.name)
            yield Candidate(
                image_id=rec.name,
                path=relative(root, rec.path),
                label=rec.row["level"],
                where=rec.where,
                patient_id=patient,
                eye=eye,
                split=split,
            )
