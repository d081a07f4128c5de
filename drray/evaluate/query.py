"""DuckDB over a run directory's Parquet tables: `manifest`, `errors`, `trials`, `explanations`, `explain_errors`.

    drray query "select cam_method, avg(pointing_hit::int) from explanations where label >= 1 group by 1"

Each table that exists in the run directory becomes a view of that name, so SQL reads the same
whatever the run; a query naming a table the run does not have fails with the list of those it has.
"""

from __future__ import annotations

import os
from pathlib import Path

# view name -> (path inside the run directory, is a hive-partitioned folder of Parquet files)
TABLES = {
    "manifest": ("manifest.parquet", False),
    "errors": ("errors.parquet", False),
    "trials": ("trials.parquet", False),
    "explanations": ("explanations", True),
    "explain_errors": ("errors", True),
}


def _sql_string(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def connect(run_dir: str | os.PathLike):
    """An in-memory DuckDB connection with one view per table found in `run_dir`."""
    import duckdb

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    con = duckdb.connect()
    found = []
    for view, (rel, partitioned) in TABLES.items():
        p = run / rel
        if partitioned:
            if not p.is_dir() or not any(p.rglob("*.parquet")):
                continue
            src = f"read_parquet({_sql_string(str(p / '**' / '*.parquet'))}, hive_partitioning = true, union_by_name = true)"
        else:
            if not p.is_file():
                continue
            src = f"read_parquet({_sql_string(str(p))})"
        con.execute(f"create view {view} as select * from {src}")
        found.append(view)
    con.execute("create table _drray_tables as select unnest(?::varchar[]) as name", [found])
    return con


def tables(con) -> list[str]:
    return [r[0] for r in con.execute("select name from _drray_tables").fetchall()]


def query(sql: str, run_dir: str | os.PathLike = "runs/demo"):
    """Run `sql` against the run directory's tables; returns a pandas DataFrame."""
    import duckdb

    con = connect(run_dir)
    try:
        return con.execute(sql).fetchdf()
    except duckdb.CatalogException as e:
        raise ValueError(f"{e}\ntables in {run_dir}: {', '.join(tables(con)) or 'none'}") from None
    finally:
        con.close()
