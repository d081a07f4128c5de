"""IDRiD, the Indian Diabetic Retinopathy Image Dataset (original folder names kept).

Grading: `B. Disease Grading/2. Groundtruths/{a. IDRiD_Disease Grading_Training Labels.csv,
b. IDRiD_Disease Grading_Testing Labels.csv}` ("Image name","Retinopathy grade",...) with images in
`B. Disease Grading/1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_001.jpg`.

Segmentation: `A. Segmentation/1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_01.jpg`
with masks `A. Segmentation/2. All Segmentation Groundtruths/{set}/{1. Microaneurysms,
2. Haemorrhages,3. Hard Exudates,4. Soft Exudates,5. Optic Disc}/IDRiD_01_{MA,HE,EX,SE,OD}.tif`.

- Official split kept: "a. Training Set" -> train (val carved from it by patient), "b. Testing
  Set" -> test.
- Image ids are `{split}/{file stem}` (`train/IDRiD_001`, `test/IDRiD_001`): the testing set
  numbers its images from IDRiD_001 again, so a bare stem would not be unique.
- Segmentation images are numbered apart from the graded ones (IDRiD_01 vs IDRiD_001) and carry
  no grade: they become rows of their own with label null and their masks. Were one named like a
  graded image of the same set (the same id), its masks would attach to that graded row instead.
- A lesion absent from an image has no mask file in IDRiD: no file means no mask, not an error.
- No patient ids are published: each image is its own patient, eye unknown.
- An 'Image name' is a file name in its set's folder: one with path parts (`../b. Testing
  Set/IDRiD_001`) is a bad_image_id errors row, never a file read from the other set.
- A release that nests each part in a folder of the same name (`B. Disease Grading/B. Disease
  Grading/...`) is read too.
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
    locate,
    location,
    merge_segmentation,
    segmentation_candidate,
    read_rows,
    relative,
    require_columns,
)
from drray.schema import Reason

GRADING = "B. Disease Grading"
SEGMENTATION = "A. Segmentation"
SETS = (("a. Training Set", "Training", "train"), ("b. Testing Set", "Testing", "test"))
LESION_FOLDERS = (
    ("1. Microaneurysms", "MA", "mask_ma"),
    ("2. Haemorrhages", "HE", "mask_he"),
    ("3. Hard Exudates", "EX", "mask_ex"),
    ("4. Soft Exudates", "SE", "mask_se"),
    ("5. Optic Disc", "OD", "mask_od"),
)


def part_dir(root: Path, name: str) -> Path:
    """`root/name`, or `root/name/name` where a release nests the part once more."""
    nested = root / name / name
    return nested if nested.is_dir() else root / name


def _graded(root: Path) -> Iterator[Candidate | Problem]:
    base = part_dir(root, GRADING)
    for set_dir, word, split in SETS:
        table = base / "2. Groundtruths" / f"{set_dir[:2]} IDRiD_Disease Grading_{word} Labels.csv"
        if not table.is_file():
            continue
        header, rows = read_rows(table)
        require_columns(table, header, ["Image name", "Retinopathy grade"])
        folder = base / "1. Original Images" / set_dir
        images = index_images(folder)
        for line, row in rows:
            where = location(table, line)
            name = row["Image name"]
            if not name:
                yield Problem(where, "ingest", Reason.MISSING_FILE, f"{where}: empty 'Image name', no image to look for")
                continue
            bad = check_image_name(name, where, "'Image name'", folder)
            if bad is not None:
                yield bad
                continue
            path = locate(images, name, folder / f"{name}.jpg")
            yield Candidate(image_id=f"{split}/{Path(path).stem}", path=relative(root, path),
                            label=row["Retinopathy grade"], where=where, split=split)


def _segmented(root: Path) -> Iterator[Candidate]:
    base = part_dir(root, SEGMENTATION)
    for set_dir, _word, split in SETS:
        masks = {col: index_images(base / "2. All Segmentation Groundtruths" / set_dir / folder)
                 for folder, _code, col in LESION_FOLDERS}
        for image_id, path in index_images(base / "1. Original Images" / set_dir).items():
            found = {col: masks[col].get(f"{image_id}_{code}") for _folder, code, col in LESION_FOLDERS}
            yield segmentation_candidate(root, f"{split}/{image_id}", path, split, found)


@register(
    "idrid",
    looked_for=f"'{GRADING}/2. Groundtruths/*Labels.csv' with '{GRADING}/1. Original Images/<set>/', "
    f"and/or '{SEGMENTATION}/1. Original Images/<set>/' with masks in '{SEGMENTATION}/2. All Segmentation Groundtruths/'",
)
def scan(root: Path, **_options) -> Iterator[Candidate | Problem]:
    yield from merge_segmentation(_graded(root), _segmented(root))
