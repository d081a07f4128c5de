"""The Ray Data sink of `drray explain`: each write task -> explanation and error part files, exactly once.

Rows arrive as one stream (`schema.EXPLAIN_STREAM_SCHEMA`): explanation rows, and error rows
(`reason` set) for images that could not be read or explained. Each write task splits its
blocks and writes

    OUT/explanations/dataset=D/split=S/part-RUN-TASK-I.parquet   (hive partitions, as write_parquet)
    OUT/explain_errors/part-RUN-TASK.parquet

File names depend only on the run id and the write task's index, and every file is written under
OUT/.staging/ first and then moved into place. A write task that Ray runs again (its worker or
node was lost) therefore replaces its own files instead of adding a second copy, and an
interrupted run leaves no half-written file where readers (pyarrow, DuckDB globs) look.
This module imports Ray: import it inside functions (the CLI imports drray.explain.pipeline).
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from ray.data import Datasink
from ray.data.block import BlockAccessor

from drray.rundir import EXPLAIN_ERRORS, EXPLANATIONS, STAGING
from drray.schema import EXPLAIN_ERRORS_SCHEMA, EXPLANATIONS_SCHEMA
from drray.storage import filesystem

log = logging.getLogger(__name__)

PARTITION_COLUMNS = ["dataset", "split"]


def remove_empty_dir(fs: pafs.FileSystem, path: str) -> None:
    """Delete `path` when it is a directory with no files left in it (the staging area after a run)."""
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return
    if not any(f.type == pafs.FileType.File for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))):
        fs.delete_dir(path)


@dataclass
class WriteStats:
    """What one write task (or, summed, a whole run) wrote."""

    rows: int = 0
    """Explanation rows."""
    errors: Counter = field(default_factory=Counter)
    """Error rows by reason code."""
    files: int = 0

    def add(self, other: "WriteStats") -> None:
        self.rows += other.rows
        self.errors.update(other.errors)
        self.files += other.files


def split_rows(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """One block of pipeline rows -> (explanation rows, error rows), each in its table's schema."""
    is_error = pc.is_valid(table["reason"])
    explanations = table.filter(pc.invert(is_error)).select(EXPLANATIONS_SCHEMA.names)
    errors = table.filter(is_error).select(EXPLAIN_ERRORS_SCHEMA.names)
    return explanations.cast(EXPLANATIONS_SCHEMA), errors.cast(EXPLAIN_ERRORS_SCHEMA)


def write_part(out: str | os.PathLike, name: str, table: pa.Table) -> WriteStats:
    """Write one block of pipeline rows as the part files called `name` (see module docstring)."""
    fs, root = filesystem(out)
    explanations, errors = split_rows(table)
    stats = WriteStats(rows=explanations.num_rows, errors=Counter(errors["reason"].to_pylist()))
    staging = posixpath.join(root, STAGING, name)
    moves: list[tuple[str, str]] = []
    if explanations.num_rows:
        staged: list[str] = []
        pads.write_dataset(
            explanations,
            posixpath.join(staging, EXPLANATIONS),
            format="parquet",
            partitioning=PARTITION_COLUMNS,
            partitioning_flavor="hive",
            basename_template=f"part-{name}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            filesystem=fs,
            file_visitor=lambda f: staged.append(f.path),
        )
        for src in staged:
            moves.append((src, posixpath.join(root, posixpath.relpath(src, staging))))
    if errors.num_rows:
        fs.create_dir(posixpath.join(staging, EXPLAIN_ERRORS), recursive=True)
        src = posixpath.join(staging, EXPLAIN_ERRORS, f"part-{name}.parquet")
        pq.write_table(errors, src, filesystem=fs)
        moves.append((src, posixpath.join(root, EXPLAIN_ERRORS, f"part-{name}.parquet")))
    for src, dst in moves:
        fs.create_dir(posixpath.dirname(dst), recursive=True)
        fs.move(src, dst)
    fs.delete_dir(staging)
    stats.files = len(moves)
    return stats


class ExplanationSink(Datasink[WriteStats]):
    """`ds.write_datasink` target; after the write, `.stats` holds the run's totals (on the driver)."""

    def __init__(self, out: str | os.PathLike, run_id: str):
        self.out = str(out)
        self.run_id = run_id
        self.stats = WriteStats()

    def get_name(self) -> str:
        return "WriteExplanations"

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        fs, root = filesystem(self.out)
        for sub in (EXPLANATIONS, EXPLAIN_ERRORS, STAGING):
            fs.create_dir(posixpath.join(root, sub), recursive=True)

    def write(self, blocks: Iterable[Any], ctx: Any) -> WriteStats:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return WriteStats()
        table = pa.concat_tables(tables, promote_options="permissive")
        return write_part(self.out, f"{self.run_id}-{ctx.task_idx:06d}", table)

    def on_write_complete(self, write_result: Any) -> None:
        for s in write_result.write_returns:
            if s is not None:
                self.stats.add(s)

    def on_write_failed(self, error: Exception) -> None:
        log.error("writing explanations to %s failed: %s", self.out, error)
