"""DDR (Dataset for Diabetic Retinopathy, Nankai University).

Grading: `DR_grading/{train,valid,test}.txt`, lines `007-1234-100.jpg 2`, with the images in
`DR_grading/{train,valid,test}/`. Lesion segmentation:
`lesion_segmentation/{train,valid,test}/image/{name}.jpg` with masks
`lesion_segmentation/{split}/label/{EX,HE,MA,SE}/{name}.tif`.

- Official split kept: train, valid -> val, test.
- Grade 5 is DDR's "ungradable": kept with label null (the photograph is real, its grade is not).
- Masks attach to the graded image of the same name; a segmentation image with no graded twin
  is a row of its own with label null. A lesion with no mask file means no mask.
- No patient ids are published: each image is its own patient, eye unknown.
- A name is a file name in its split's folder: one with path parts (`../test/x.jpg`) is a
  bad_image_id errors row, never a file read from another split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from drray.data.sources import register
from drray.data.sources.base import (
    Candidate,
    Problem,
    check_image_name,
    index_images,
    location,
    merge_segmentation,
    segmentation_candidate,
    relative,
)

SPLITS = (("train", "train"), ("valid", "val"), ("test", "test"))
LESIONS = (("EX", "mask_ex"), ("HE", "mask_he"), ("MA", "mask_ma"), ("SE", "mask_se"))
UNGRADABLE = "5"


def _graded(root: Path) -> Iterator[Candidate | Problem]:
    base = root / "DR_grading"
    for folder, split in SPLITS:
        table = base / f"{folder}.txt"
        if not table.is_file():
            continue
        with table.open(encoding="utf-8-sig") as fh:
            lines = fh.read().splitlines()
        for number, text in enumerate(lines, start=1):
            fields = text.rsplit(maxsplit=1)
            if not fields:
                continue
            where = location(table, number)
            # The grade is the last field; a line with one field has no grade (label_missing).
            name, label = (fields[0], fields[1]) if len(fields) == 2 else (fields[0], None)
            bad = check_image_name(name, where, "image name", base / folder)
            if bad is not None:
                yield bad
                continue
            ungradable = label == UNGRADABLE
            yield Candidate(
                image_id=Path(name).stem,
                path=relative(root, base / folder / name),
                label=None if ungradable else label,
                where=where,
                split=split,
                label_required=not ungradable,
            )


def _segmented(root: Path) -> Iterator[Candidate]:
    base = root / "lesion_segmentation"
    for folder, split in SPLITS:
        masks = {col: index_images(base / folder / "label" / code) for code, col in LESIONS}
        for image_id, path in index_images(base / folder / "image").items():
            found = {col: masks[col].get(image_id) for _code, col in LESIONS}
            yield segmentation_candidate(root, image_id, path, split, found)


@register(
    "ddr",
    looked_for="DR_grading/{train,valid,test}.txt ('name grade' lines) with DR_grading/{train,valid,test}/, "
    "and/or lesion_segmentation/{split}/image/ with masks in lesion_segmentation/{split}/label/{EX,HE,MA,SE}/",
)
def scan(root: Path, **_options) -> Iterator[Candidate | Problem]:
    yield from merge_segmentation(_graded(root), _segmented(root))
