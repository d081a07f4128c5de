"""Messidor-2 with the adjudicated ICDR grades of Krause et al. (Kaggle "messidor2-dr-grades").

Layout: `messidor_data.csv` (image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable;
the "messidor2 preprocess" release names them id_code,diagnosis) with the photographs in
`messidor-2/preprocess/`, `messidor-2/messidor-2/preprocess/` or `IMAGES/` (.png/.jpg/.JPG/.tif),
matched by file stem so a grade for `x.tif` finds a converted `x.png`.

- Ungradable photographs (adjudicated_gradable = 0) are kept with label null: the image is fine,
  the graders could not grade it. A gradable row without a grade is a label_missing error.
- Patients: the ADCIS release's `messidor-2.csv` (semicolon-separated `left;right` pairs of one
  examination) gives both images of a pair one patient id (the left image's stem) and their eyes.
  Without it each image is its own patient and its eye is unknown; the file names carry no
  pairing that could be derived safely.
- No official split.
- An image_id is a file name: one with path parts is a bad_image_id errors row, never a file
  read from another folder.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Iterator

from drray.data.sources import register
from drray.data.sources.base import (
    IMAGE_SUFFIXES,
    Candidate,
    Problem,
    check_image_name,
    index_images,
    locate,
    location,
    pick_column,
    read_rows,
    relative,
    require_columns,
)
from drray.schema import Reason

log = logging.getLogger(__name__)

IMAGE_DIRS = ("messidor-2/preprocess", "messidor-2/messidor-2/preprocess", "IMAGES")
_ID_COLUMNS = ("image_id", "id_code")
_GRADE_COLUMNS = ("adjudicated_dr_grade", "diagnosis")
_NOT_GRADABLE = ("0", "0.0", "false", "no")


def _stem(name: str) -> str:
    return Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name


def read_pairs(path: Path) -> dict[str, tuple[str, str]]:
    """`messidor-2.csv` -> image stem -> (patient id, eye); {} when the file is absent."""
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        lines = [[c.strip() for c in cells] for cells in csv.reader(fh, delimiter=";") if any(cells)]
    eyes = ("left", "right")
    if lines and not lines[0][0].lower().endswith(IMAGE_SUFFIXES):
        # A header row: it says which eye each column holds.
        if lines[0][0].lower().startswith("right"):
            eyes = ("right", "left")
        lines = lines[1:]
    out: dict[str, tuple[str, str]] = {}
    for cells in lines:
        patient = _stem(cells[0])
        for name, eye in zip(cells[:2], eyes):
            if name:
                out[_stem(name)] = (patient, eye)
    log.info("%s: %d images in %d examination pairs", path, len(out), len(lines))
    return out


@register(
    "messidor2",
    looked_for="messidor_data.csv (image_id,adjudicated_dr_grade,...,adjudicated_gradable) with images in "
    + " or ".join(f"{d}/" for d in IMAGE_DIRS),
)
def scan(root: Path, **_options) -> Iterator[Candidate | Problem]:
    table = root / "messidor_data.csv"
    if not table.is_file():
        return
    header, rows = read_rows(table)
    id_col, grade_col = pick_column(header, _ID_COLUMNS), pick_column(header, _GRADE_COLUMNS)
    require_columns(table, header, [id_col or _ID_COLUMNS[0], grade_col or _GRADE_COLUMNS[0]])
    gradable_col = "adjudicated_gradable" if "adjudicated_gradable" in header else None
    images = index_images(*(root / d for d in IMAGE_DIRS))
    default_dir = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[-1])
    pairs = read_pairs(root / "messidor-2.csv")
    for line, row in rows:
        where = location(table, line)
        name = row[id_col]
        if not name:
            yield Problem(where, "ingest", Reason.MISSING_FILE, f"{where}: empty {id_col}, no image to look for")
            continue
        bad = check_image_name(name, where, id_col, default_dir)
        if bad is not None:
            yield bad
            continue
        image_id = _stem(name)
        gradable = not (gradable_col and row[gradable_col].lower() in _NOT_GRADABLE)
        patient, eye = pairs.get(image_id, (None, None))
        path = locate(images, name, default_dir / (name if name != image_id else f"{name}.png"))
        yield Candidate(
            image_id=image_id,
            path=relative(root, path),
            label=row[grade_col] if gradable else None,
            where=where,
            patient_id=patient,
            eye=eye,
            label_required=gradable,
        )
