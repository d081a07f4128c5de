"""SQL (DuckDB) over a run directory's tables, each a view by name; local folders and object storage alike.

    drray query "select cam_method, avg(pointing_hit::int) from explanations where label >= 1 group by 1"
    df = drray.query("select * from explanations where pred != label", run="runs/demo")   # pandas

Views (those the run has): manifest, ingest_errors, trials, explanations, explain_errors, randomisation,
strategies, strategy_of, interventions, reviews, metrics, and `errors`: both error tables in one, with a
`command` column (ingest or explain). Once `drray audit` has run, `explanations` has its four strategy columns
(STRATEGY_COLUMNS, from strategy_of; null for rows the audit did not see). Tables are
opened as pyarrow datasets (hive partitions of explanations/ become columns), so a run on s3://
is queried the same way, with filters pushed down to the Parquet files.
"""

from __future__ import annotations

import os

from drray.rundir import DEFAULT_RUN, ERRORS_VIEW, TABLES, RunDir

FORMATS = ("table", "csv", "json")
STRATEGY_KEYS = ("image_id", "dataset", "split", "model_id", "cam_method")
"""What names an explanation row in strategy_of (drray.audit)."""
STRATEGY_COLUMNS = ("strategy", "referable_strategy", "camera_strategy", "camera_referable_strategy")
"""The strategies of a row (drray.audit: per predicted grade and referable call, in the fundus and camera frames)."""
STRATEGY_JOIN = (
    f"select e.*, {', '.join(f's.{c}' for c in STRATEGY_COLUMNS)} from _arrow_explanations e "
    "left join _arrow_strategy_of s on " + " and ".join(f"e.{k} is not distinct from s.{k}" for k in STRATEGY_KEYS))


def _dataset(location: str, partitioned: bool):
    """A pyarrow dataset of a table file or a hive-partitioned folder; None when the run lacks it."""
    import pyarrow.dataset as pads
    from pyarrow import fs as pafs

    from drray.storage import filesystem

    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if partitioned:
        if kind != pafs.FileType.Directory:
            return None
        ds = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive",
                          exclude_invalid_files=True)
        return ds if ds.files else None
    if kind != pafs.FileType.File:
        return None
    return pads.dataset(path, filesystem=fs, format="parquet")


def open_table(location: str | os.PathLike, partitioned: bool):
    """A pyarrow dataset of one table (a Parquet file, or a hive-partitioned folder), or None where there is none.

    The same reader `connect` gives DuckDB, for Python code that streams a table itself (drray.evaluate).
    """
    return _dataset(str(location), partitioned)


def connect(run_dir: str | os.PathLike):
    """An in-memory DuckDB connection with one view per table found in `run_dir`."""
    import duckdb

    from drray import storage

    run = RunDir(run_dir)
    if not storage.is_dir(run.root):
        raise FileNotFoundError(f"run directory {run.root!r} does not exist")
    con = duckdb.connect()
    found = []
    for t in TABLES:
        ds = _dataset(run.path(t.name), t.partitioned)
        if ds is None:
            continue
        con.register(f"_arrow_{t.view}", ds)
        con.execute(f"create view {t.view} as select * from _arrow_{t.view}")
        found.append(t.view)
    if "explanations" in found and "strategy_of" in found:
        con.execute(f"create or replace view explanations as {STRATEGY_JOIN}")
    parts = [f"select '{name.split('_')[0]}' as command, * from {name}"
             for name in ("ingest_errors", "explain_errors") if name in found]
    if parts:
        con.execute(f"create view {ERRORS_VIEW} as " + " union all by name ".join(parts))
        found.append(ERRORS_VIEW)
    con.execute("create table _drray_tables as select unnest(?::varchar[]) as name", [found])
    return con


def tables(con) -> list[str]:
    """The views a connection from `connect` holds."""
    return [r[0] for r in con.execute("select name from _drray_tables").fetchall()]


def query(sql: str, run: str | os.PathLike = DEFAULT_RUN):
    """Run `sql` against the run directory's tables; returns a pandas DataFrame.

    A query naming a table the run does not have fails with the list of those it has; any other
    bad query raises DuckDB's own error (duckdb.Error).
    """
    import duckdb

    con = connect(run)
    try:
        return con.execute(sql).fetchdf()
    except duckdb.CatalogException as e:
        raise duckdb.CatalogException(f"{e}\ntables in {run}: {', '.join(tables(con)) or 'none'}") from None
    finally:
        con.close()


def write_result(df, fmt: str, output: str | os.PathLike | None, max_rows: int = 50) -> str:
    """The result as text (table, csv or json) to print, or written to `output` (.parquet by suffix, else fmt)."""
    import pandas as pd

    from drray import storage

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if output is not None and str(output).endswith(".parquet"):
        import pyarrow as pa

        storage.write_parquet(output, pa.Table.from_pandas(df, preserve_index=False))
        return f"wrote {len(df)} rows to {output}"
    if fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "json":
        text = df.to_json(orient="records", date_format="iso", default_handler=_binary) + "\n"
    else:
        shown = df.map(_short) if len(df.columns) else df  # maps and PNGs print as their size
        with pd.option_context("display.max_rows", max_rows, "display.width", 200,
                               "display.max_columns", 30, "display.max_colwidth", 40):
            text = shown.to_string(index=False, max_rows=max_rows) + "\n"
    if output is not None:
        storage.write_text(output, text)
        return f"wrote {len(df)} rows to {output}"
    return text.rstrip("\n")


def _short(v):
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    return v


def _binary(v):
    import base64

    if isinstance(v, (bytes, bytearray)):
        return base64.b64encode(bytes(v)).decode("ascii")
    raise TypeError(f"cannot write {type(v).__name__} as JSON")
