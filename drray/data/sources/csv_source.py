"""A user's own labels file: one row per image, columns named by the caller.

`csv_path` (default `ROOT/labels.csv`) with `path_column` (default "path", relative to the root
or absolute inside it) and `label_column` (default "label", required in every row); optional
`id_column` (default: the path without its suffix, so `siteA/001.png` -> `siteA/001`, unique
whenever paths are; an empty id cell falls back to it too), `patient_column` (default: each
image its own patient). Columns named `eye` (left/right, L/R, OS/OD) and `mask_ma` ... `mask_od`
(mask paths like image paths, empty = none) are read where present. No official split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from drray.data.sources import register
from drray.data.sources.base import Candidate, Problem, location, normalise_eye, read_rows, require_columns
from drray.schema import MASK_COLUMNS, Reason


def path_id(root: Path, text: str) -> str:
    """An image id from a path: relative to the root where it lies inside, without suffix."""
    p = Path(text)
    if p.is_absolute():
        try:
            p = p.relative_to(root)
        except ValueError:
            pass
    return p.with_suffix("").as_posix()


def scan_table(
    root: Path,
    table: Path,
    *,
    path_column: str,
    label_column: str,
    id_column: str | None,
    patient_column: str | None,
) -> Iterator[Candidate | Problem]:
    """Rows of a labels table -> candidates (shared by the csv and synth sources)."""
    if not table.is_file():
        return
    header, rows = read_rows(table)
    require_columns(table, header, [c for c in (path_column, label_column, id_column, patient_column) if c])
    masks = [c for c in MASK_COLUMNS if c in header]
    for line, row in rows:
        where = location(table, line)
        path = row[path_column]
        if not path:
            yield Problem(where, "ingest", Reason.MISSING_FILE, f"{where}: empty {path_column!r}, no image to look for")
            continue
        yield Candidate(
            image_id=(row[id_column] if id_column else "") or path_id(root, path),
            path=path,
            label=row[label_column],
            where=where,
            patient_id=(row[patient_column] or None) if patient_column else None,
            eye=normalise_eye(row.get("eye")),
            masks={c: row[c] for c in masks if row[c]},
        )


@register(
    "csv",
    looked_for="a labels CSV (csv_path, default ROOT/labels.csv) with an image path column and a grade column",
)
def scan(
    root: Path,
    *,
    csv_path: str | Path | None = None,
    path_column: str = "path",
    label_column: str = "label",
    id_column: str | None = None,
    patient_column: str | None = None,
    **_options,
) -> Iterator[Candidate | Problem]:
    table = Path(csv_path) if csv_path is not None else root / "labels.csv"
    yield from scan_table(root, table, path_column=path_column, label_column=label_column,
                          id_column=id_column, patient_column=patient_column)
