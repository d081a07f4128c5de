"""What a dataset adapter yields, and the small readers every adapter shares.

An adapter turns one on-disk layout into `Candidate` records (an image it found, with the raw
label text as written in the source) and `Problem`s (something it could not even make a record
of). It judges nothing else: labels, paths, duplicates and image content are checked once, for
every source alike, by `drray.data.ingest`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Iterable, Iterator

from drray.schema import EYES, Reason

log = logging.getLogger(__name__)

# File name suffixes that photographs and masks come with in the supported datasets.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class Candidate:
    """One image an adapter found, before validation."""

    image_id: str
    path: str
    """As written in the source: relative to the dataset root, or absolute."""
    label: str | None
    """Raw grade text; None or "" when the source gives none."""
    where: str
    """Where the record came from (`file:line`, or the image path), for errors rows."""
    patient_id: str | None = None
    """None: the image is its own patient."""
    eye: str | None = None
    split: str | None = None
    """Official split of the source (train/val/test), None where it has none."""
    label_required: bool = True
    """False where the source publishes no grade for this image (a hidden test set, ungradable)."""
    masks: dict[str, str] = field(default_factory=dict)
    """Manifest mask column (`mask_ma` ...) -> mask path, relative to the root or absolute."""


@dataclass(frozen=True)
class Problem:
    """A record an adapter could not build; becomes one errors row."""

    source: str
    stage: str
    reason: str
    detail: str


def location(path: Path, line: int) -> str:
    """`file:line` for an errors row."""
    return f"{path}:{line}"


def read_rows(path: Path, delimiter: str = ",") -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A delimited text file -> (header, [(line number, row), ...]).

    Header names and cells are stripped (IDRiD's headers carry trailing spaces), a UTF-8 BOM is
    dropped, and blank rows are skipped. Line numbers are those of the file, header = line 1.
    """
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        rows = []
        for cells in reader:
            if any(c.strip() for c in cells):
                cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
                rows.append((reader.line_num, dict(zip(header, cells))))
    return header, rows


def require_columns(path: Path, header: list[str], columns: list[str]) -> None:
    """Raise a ValueError naming the file, the missing columns and the ones it has."""
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(
            f"{path} has no column(s) {', '.join(repr(c) for c in missing)}; its columns are "
            f"{', '.join(repr(h) for h in header) or '(none: empty file)'}. "
            "Check the file or name the right columns."
        )


def pick_column(header: list[str], names: tuple[str, ...]) -> str | None:
    """The first of `names` present in `header` (same layout, different releases)."""
    return next((n for n in names if n in header), None)


def index_images(*dirs: Path) -> dict[str, Path]:
    """Image files directly in `dirs`, by file stem; the first directory wins a clash."""
    found: dict[str, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                found.setdefault(p.stem, p)
    return found


def not_a_file_name(name: str) -> str | None:
    """Why `name` cannot be the name of a file directly in one folder; None when it can.

    Layouts whose label files name images by file name or stem (APTOS, EyePACS, Messidor-2,
    IDRiD, DDR) join that name to their image folder: a name with path parts would read a file
    of another folder or split (`../test_images/x`, `a/b`, `C:\\x`, `/abs`), so it is refused
    rather than resolved. Both separators count on every OS: the labels travel between them.
    """
    if "/" in name or "\\" in name:
        return "has path parts (a '/' or '\\')"
    if PureWindowsPath(name).drive:
        return "starts with a drive letter"
    if name in (".", ".."):
        return "names a folder, not a file"
    if "\x00" in name:
        return "contains a NUL byte"
    return None


def check_image_name(name: str, where: str, column: str, folder: Path) -> Problem | None:
    """A bad_image_id Problem when `name` (from `column` at `where`) is not a bare file name in `folder`."""
    why = not_a_file_name(name)
    if why is None:
        return None
    return Problem(
        where, "ingest", Reason.BAD_IMAGE_ID,
        f"{where}: {column} {name!r} {why}; this layout names each image by its file name in {folder}, "
        "so the row is refused rather than read from another folder. Fix the name in the label file.",
    )


def locate(index: dict[str, Path], name: str, fallback: Path) -> Path:
    """The indexed file for an image `name` (with or without suffix), else `fallback`.

    A name that is not on disk keeps the fallback path, so the missing file is reported with
    the path where it was expected.
    """
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_SUFFIXES else name
    return index.get(stem) or index.get(name) or fallback


def relative(root: Path, path: Path) -> str:
    """`path` relative to `root` with forward slashes; as given when it is not under the root.

    Purely lexical: a name from a label file may still climb out with `..` or a symlink, which
    ingest checks on the resolved path.
    """
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def normalise_eye(text: str | None) -> str | None:
    """'left'/'L'/'OS' -> 'left', 'right'/'R'/'OD' -> 'right', anything else -> None."""
    if not text:
        return None
    t = text.strip().lower()
    if t in ("l", "os"):
        return "left"
    if t in ("r", "od"):
        return "right"
    return t if t in EYES else None


@dataclass(frozen=True)
class NamedRow:
    """A label-file row that names an image by file name or stem, with where that image is."""

    row: dict[str, str]
    where: str
    name: str
    path: Path


def rows_naming_images(root: Path, table: Path, folder: str, name_column: str, required: list[str],
                       suffix: str) -> Iterator["NamedRow | Problem"]:
    """The rows of `table` whose `name_column` names an image in `root/folder` (APTOS, EyePACS layouts).

    An empty name, or one with path parts (which would read a file of another folder or split),
    is a Problem; a name not on disk keeps the path `folder/name + suffix`, so the missing file is
    reported where it was expected.
    """
    header, rows = read_rows(table)
    require_columns(table, header, required)
    images = index_images(root / folder)
    for line, row in rows:
        where = location(table, line)
        name = row[name_column]
        if not name:
            yield Problem(where, "ingest", Reason.MISSING_FILE, f"{where}: empty {name_column}, no image to look for")
            continue
        bad = check_image_name(name, where, name_column, root / folder)
        if bad is not None:
            yield bad
            continue
        yield NamedRow(row, where, name, locate(images, name, root / folder / f"{name}{suffix}"))


def segmentation_candidate(root: Path, image_id: str, path: Path, split: str | None,
                           masks: dict[str, Path | None]) -> Candidate:
    """An image of a lesion-segmentation set: no grade published (label null, not required), its masks by column."""
    return Candidate(
        image_id=image_id,
        path=relative(root, path),
        label=None,
        where=str(path),
        split=split,
        label_required=False,
        masks={col: relative(root, p) for col, p in masks.items() if p is not None},
    )


def merge_segmentation(
    graded: Iterable[Candidate | Problem], segmented: Iterable[Candidate]
) -> Iterator[Candidate | Problem]:
    """The graded records, with the masks of segmentation-set images attached to graded images of the
    same id (IDRiD and DDR ship grading and segmentation as two sets).

    Problems of the graded set pass through first. A segmentation image with no graded twin stays a
    row of its own (label null, not required).
    """
    kept: list[Candidate] = []  # a list, not a dict: ingest reports duplicate ids, so none may vanish here
    for record in graded:
        if isinstance(record, Problem):
            yield record
        else:
            kept.append(record)
    by_id = {c.image_id: c for c in kept}
    extra = []
    for s in segmented:
        twin = by_id.get(s.image_id)
        if twin is None:
            extra.append(s)
        else:
            twin.masks.update(s.masks)
    yield from kept
    yield from extra
