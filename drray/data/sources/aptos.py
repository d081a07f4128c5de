"""APTOS 2019 Blindness Detection (Kaggle).

Layout: `train.csv` (id_code,diagnosis) with `train_images/{id_code}.png`, and `test.csv`
(id_code only) with `test_images/{id_code}.png`.

- The test grades were never published: test rows get label null and split "test".
- The labelled rows have no official split (the only official test set is unlabelled), so
  they are split train/val/test by patient like a source without one; a labelled test split
  is what evaluation needs.
- APTOS publishes no patient ids: each image is its own patient, eye unknown.
- An id_code is a file stem: one with path parts (`../test_images/x`) is a bad_image_id errors
  row, never a file read from another folder or split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from drray.data.sources import register
from drray.data.sources.base import Candidate, Problem, relative, rows_naming_images

_PARTS = (
    # csv name, image folder, official split, has labels
    ("train.csv", "train_images", None, True),
    ("test.csv", "test_images", "test", False),
)


@register(
    "aptos2019",
    looked_for="train.csv (id_code,diagnosis) with train_images/{id_code}.png, and/or test.csv with test_images/",
)
def scan(root: Path, **_options) -> Iterator[Candidate | Problem]:
    for csv_name, folder, split, labelled in _PARTS:
        table = root / csv_name
        if not table.is_file():
            continue
        required = ["id_code", "diagnosis"] if labelled else ["id_code"]
        for rec in rows_naming_images(root, table, folder, "id_code", required, ".png"):
            if isinstance(rec, Problem):
                yield rec
                continue
            yield Candidate(
                image_id=rec.name,
                path=relative(root, rec.path),
                label=rec.row["diagnosis"] if labelled else None,
                where=rec.where,
                split=split,
                label_required=labelled,
            )
