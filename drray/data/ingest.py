"""`drray ingest`: a dataset on disk -> `manifest.parquet` + `ingest_errors.parquet`.

    result = ingest("aptos2019", "data/aptos", "runs/aptos")
    print(result.summary())

The adapter of the source (drray.data.sources) lists candidate records; every record is then judged
the same way, whatever its source:

- the image id must be new (the first row with an id is kept, later ones are duplicate_id);
- the grade must be an integer 0-4 where the source requires one (an integral float such as
  "2.0" counts as 2); unlabelled-by-design rows (hidden test sets, ungradable) keep label null;
- the image path, relative to the root or absolute, must resolve (symlinks too) inside the root;
- the file must decode completely within `max_pixels` (images.probe), which gives width/height;
- a mask must resolve inside the root and decode; a bad mask is an errors row and a null mask
  column, the image is kept.

A refused row is not in the manifest; it is one errors row with a stable reason code
(drray.schema.Reason). Manifest paths are relative to the manifest's folder when the file lies
inside it (a run directory that holds its data moves as one) and absolute otherwise.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from drray import storage
from drray.data.sources import Candidate, Problem, get_source
from drray.data.images import DEFAULT_MAX_PIXELS
from drray.data.probe import probe_records
from drray.schema import ERRORS_SCHEMA, GRADES, MANIFEST_SCHEMA, MASK_COLUMNS, SPLITS, Reason
from drray.data.splits import assign_splits
from drray.rundir import RunDir

log = logging.getLogger(__name__)

UNLABELLED = "unlabelled"
_CSV_DEFAULTS = dict(csv_path=None, path_column="path", label_column="label", id_column=None, patient_column=None)


class NoUsableImages(Exception):
    """Nothing under the dataset root could become a manifest row."""


class Rejected(Exception):
    """A record refused before its image is read; becomes one errors row."""

    def __init__(self, source: str, reason: str, detail: str):
        super().__init__(detail)
        self.source, self.reason, self.detail = source, reason, detail


@dataclass
class IngestResult:
    """What `ingest` wrote, with counts for the summary."""

    manifest_path: str
    errors_path: str
    n_rows: int
    errors_by_reason: dict[str, int]
    n_by_split: dict[str, int]
    n_by_label: dict[str, int]
    """Grade ("0".."4", or "unlabelled") -> rows."""
    n_by_split_label: dict[str, dict[str, int]] = field(default_factory=dict)
    source: str = ""
    root: str = ""

    @property
    def n_errors(self) -> int:
        return sum(self.errors_by_reason.values())

    def summary(self) -> str:
        """Rows kept, rows by split and grade, errors by reason: what the CLI prints."""
        cols = [str(g) for g in GRADES] + [UNLABELLED]
        lines = [
            f"ingested {self.source} from {self.root}: {self.n_rows:,} rows kept, {self.n_errors:,} errors",
            f"  manifest: {self.manifest_path}",
            f"  errors:   {self.errors_path}",
            "  rows by split and grade:",
            "    " + f"{'split':<6}" + "".join(f"{c:>11}" for c in cols) + f"{'total':>9}",
        ]
        for split in SPLITS:
            counts = self.n_by_split_label.get(split, {})
            lines.append("    " + f"{split:<6}" + "".join(f"{counts.get(c, 0):>11,}" for c in cols)
                         + f"{self.n_by_split.get(split, 0):>9,}")
        if self.errors_by_reason:
            lines.append("  errors by reason:")
            lines += [f"    {reason:<20}{n:>9,}" for reason, n in sorted(self.errors_by_reason.items())]
        return "\n".join(lines)


def parse_label(text: str | None, required: bool, where: str, image_id: str) -> int | None:
    """Raw grade text -> 0-4, None when absent and not required, or `Rejected`."""
    if text is None or not text.strip():
        if required:
            raise Rejected(where, Reason.LABEL_MISSING, f"{where}: image {image_id!r} has no grade; give it one (0-4)")
        return None
    t = text.strip()
    try:
        value = int(t)
    except ValueError:
        try:
            x = float(t)
        except ValueError:
            x = math.nan
        if not (math.isfinite(x) and x.is_integer()):
            raise Rejected(where, Reason.LABEL_NOT_INTEGER,
                           f"{where}: grade {t!r} of image {image_id!r} is not an integer ICDR grade 0-4") from None
        value = int(x)
    if value not in GRADES:
        raise Rejected(where, Reason.LABEL_OUT_OF_RANGE,
                       f"{where}: grade {value} of image {image_id!r} is outside ICDR grades 0-4")
    return value


def _inside(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def _reject_outside(raw: str, where: str, resolved: str, top: str) -> Rejected:
    return Rejected(raw, Reason.PATH_OUTSIDE_ROOT,
                    f"{where}: path {raw!r} resolves to {resolved}, outside the dataset root {top}; "
                    "move the file under the root or fix the path")


def resolve_inside(root: "Path | storage.RemotePath", raw: str, where: str) -> str:
    """A path from a source -> absolute normalised path (or URI), or `Rejected` if it leaves the root.

    In object storage there are no symlinks: `..` is resolved lexically, and a local path (or a
    URI elsewhere) named by a dataset kept in a bucket is outside it.
    """
    if isinstance(root, storage.RemotePath):
        full = root / raw  # a URI replaces the root; `..` is normalised away
        if (os.path.isabs(raw) and not storage.is_uri(raw)) or not full.is_relative_to(root):
            raise _reject_outside(raw, where, str(full) if storage.is_uri(raw) or not os.path.isabs(raw) else raw,
                                  str(root))
        return str(full)
    p = Path(raw)
    full = p if p.is_absolute() else root / p
    real, top = os.path.realpath(full), os.path.realpath(root)
    if not _inside(real, top):
        raise _reject_outside(raw, where, real, top)
    return os.path.normpath(os.path.abspath(full))


@dataclass
class _Record:
    candidate: Candidate
    path: str
    label: int | None
    masks: dict[str, str]


def _error(source: str, stage: str, reason: str, detail: str) -> dict[str, str]:
    return {"source": source, "stage": stage, "reason": reason, "detail": detail}


def validate(records: list[Candidate | Problem], root: Path) -> tuple[list[_Record], list[dict[str, str]]]:
    """Ids, grades and paths of the adapter's records -> accepted records + errors rows."""
    kept: list[_Record] = []
    errors: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for rec in records:
        if isinstance(rec, Problem):
            errors.append(asdict(rec))
            continue
        if rec.image_id in seen:
            errors.append(_error(rec.where, "ingest", Reason.DUPLICATE_ID,
                                 f"{rec.where}: image id {rec.image_id!r} was first seen at {seen[rec.image_id]}; "
                                 "the first is kept"))
            continue
        seen[rec.image_id] = rec.where
        try:
            label = parse_label(rec.label, rec.label_required, rec.where, rec.image_id)
            path = resolve_inside(root, rec.path, rec.where)
        except Rejected as r:
            errors.append(_error(r.source, "ingest", r.reason, r.detail))
            continue
        masks = {}
        for col, raw in rec.masks.items():
            if col not in MASK_COLUMNS:
                raise ValueError(f"adapter bug: mask column {col!r} of {rec.where} is not one of {MASK_COLUMNS}")
            try:
                masks[col] = resolve_inside(root, raw, f"{rec.where} ({col})")
            except Rejected as r:
                errors.append(_error(r.source, "ingest", r.reason, r.detail))
        kept.append(_Record(rec, path, label, masks))
    return kept, errors


def _probe(kept: list[_Record], max_pixels: int, parallel: bool | None,
           errors: list[dict[str, str]]) -> tuple[list[_Record], list[tuple[int, int]]]:
    """Decode every image and mask: usable records with their (width, height); appends errors rows."""
    probed = probe_records([(r.path, sorted(r.masks.items())) for r in kept], max_pixels, parallel)
    rows: list[_Record] = []
    sizes: list[tuple[int, int]] = []
    for rec, (width, height, image_error, mask_errors) in zip(kept, probed):
        if image_error is not None:
            reason, detail = image_error
            errors.append(_error(rec.path, "read" if reason == Reason.MISSING_FILE else "decode", reason, detail))
            continue
        for col, reason, detail in mask_errors:
            # The image stays; only this mask column becomes null.
            errors.append(_error(rec.masks.pop(col), "read" if reason == Reason.MASK_MISSING else "decode",
                                 reason, f"{col} of image {rec.candidate.image_id!r}: {detail}"))
        rows.append(rec)
        sizes.append((width, height))
    return rows, sizes


def _manifest_path(path: str, out: str) -> str:
    """Relative to the run directory where the file lies inside it (the two move as one), else absolute."""
    if storage.is_uri(path) or storage.is_uri(out):
        inside = storage.is_uri(path) and storage.is_uri(out) and path.startswith(out.rstrip("/") + "/")
        return path[len(out.rstrip("/")) + 1:] if inside else path
    return os.path.relpath(path, out) if _inside(path, out) else path


def _counts(splits: list[str], labels: list[int | None]) -> dict[str, dict]:
    """Rows by split, by grade and by both, for IngestResult."""
    grades = [UNLABELLED if g is None else str(g) for g in labels]
    both: dict[str, dict[str, int]] = {}
    for s, g in zip(splits, grades):
        both.setdefault(s, {}).setdefault(g, 0)
        both[s][g] += 1
    return dict(n_by_split=dict(Counter(splits)), n_by_label=dict(Counter(grades)), n_by_split_label=both)


def ingest(
    source: str,
    root: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    csv_path: str | Path | None = None,
    path_column: str = "path",
    label_column: str = "label",
    id_column: str | None = None,
    patient_column: str | None = None,
    parallel: bool | None = None,
) -> IngestResult:
    """Read dataset `source` under `root`, write `out/manifest.parquet` and `out/ingest_errors.parquet`.

    parallel: probe images in Ray tasks; None = when there are more than 256 images.
    Raises NoUsableImages when no row could be kept (ingest_errors.parquet is written first).
    """
    src = get_source(source)
    root = storage.as_path(root)
    if not root.is_dir():
        raise NoUsableImages(f"dataset root {str(root)!r} is not a directory; source {source!r} looks for "
                             f"{src.looked_for}")
    options: dict[str, Any] = dict(csv_path=csv_path, path_column=path_column, label_column=label_column,
                                   id_column=id_column, patient_column=patient_column)
    if source != "csv" and options != _CSV_DEFAULTS:
        log.warning("csv options %s are ignored for source %r",
                    {k: v for k, v in options.items() if v != _CSV_DEFAULTS[k]}, source)
    run = RunDir(out if storage.is_uri(out) else os.path.abspath(out))
    storage.make_dirs(run.root)
    manifest_path, errors_path = run.manifest, run.ingest_errors

    records = list(src.scan(root, **options))
    log.info("%s: %d records found under %s", source, len(records), root)
    kept, errors = validate(records, root)

    rows, sizes = _probe(kept, max_pixels, parallel, errors)
    storage.write_parquet(errors_path, pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA))
    errors_by_reason = dict(Counter(e["reason"] for e in errors))
    if not rows:
        if records:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(errors_by_reason.items()))
            found = f"all {len(records)} records were refused (see {errors_path}: {reasons})"
        else:
            found = "nothing matching was found"
        raise NoUsableImages(f"no usable images for source {source!r} under {str(root)!r}: looked for "
                             f"{src.looked_for}; {found}")

    splits = assign_splits(
        [r.candidate.patient_id or r.candidate.image_id for r in rows],
        [r.label for r in rows],
        [r.candidate.split for r in rows],
        seed=seed,
        fractions=split_fractions,
    )
    out_abs = run.root
    columns: dict[str, list] = {
        "image_id": [r.candidate.image_id for r in rows],
        "dataset": [source] * len(rows),
        "path": [_manifest_path(r.path, out_abs) for r in rows],
        "label": [r.label for r in rows],
        "patient_id": [r.candidate.patient_id or r.candidate.image_id for r in rows],
        "eye": [r.candidate.eye for r in rows],
        "split": list(splits),
        **{c: [_manifest_path(r.masks[c], out_abs) if c in r.masks else None for r in rows] for c in MASK_COLUMNS},
        "width": [w for w, _ in sizes],
        "height": [h for _, h in sizes],
    }
    storage.write_parquet(manifest_path, pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA))

    result = IngestResult(
        manifest_path=manifest_path,
        errors_path=errors_path,
        n_rows=len(rows),
        errors_by_reason=errors_by_reason,
        source=source,
        root=str(root),
        **_counts(list(splits), [r.label for r in rows]),
    )
    log.info("%s: %d rows -> %s, %d errors -> %s", source, len(rows), manifest_path, len(errors), errors_path)
    return result


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_null(actual)
    return actual.equals(expected)


def _read(path: str | os.PathLike, schema: pa.Schema, what: str) -> pd.DataFrame:
    p = str(path)
    if not storage.is_file(p):
        raise FileNotFoundError(f"{what} {p!r} does not exist; write one with `drray ingest`")
    try:
        table = storage.read_parquet(p)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{p!r} is not a drray {what}: it cannot be read as Parquet ({e})") from None
    names = set(table.schema.names)
    missing = [f.name for f in schema if f.name not in names]
    wrong = [f"{f.name} is {table.schema.field(f.name).type}, expected {f.type}"
             for f in schema if f.name in names and not _compatible(table.schema.field(f.name).type, f.type)]
    if missing or wrong:
        raise ValueError(f"{p!r} is not a drray {what}: "
                         + "; ".join(([f"missing column(s) {', '.join(missing)}"] if missing else []) + wrong)
                         + ". Write it with `drray ingest`.")
    # A nullable integer keeps unknown grades as <NA> instead of turning the column into floats.
    return table.to_pandas(types_mapper={pa.int8(): pd.Int8Dtype()}.get)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """A manifest written by `ingest`, schema-checked; `label` is a nullable Int8 column."""
    return _read(path, MANIFEST_SCHEMA, "manifest")


def read_errors(path: str | os.PathLike) -> pd.DataFrame:
    """An errors table written by `ingest` (ingest_errors.parquet), schema-checked."""
    return _read(path, ERRORS_SCHEMA, "errors table")
