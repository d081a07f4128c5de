"""The README's worked queries (every ```sql block under "## Querying") run against a tiny run dir, and a
bad query fails through `python -m drray query` with DuckDB's own message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_evaluate import write_run

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def section(text: str, heading: str) -> str:
    """The text under a `## heading` up to the next `## ` heading ('' when there is no such section)."""
    m = re.search(rf"^## {re.escape(heading)}\s*$", text, re.M)
    if not m:
        return ""
    rest = text[m.end():]
    nxt = re.search(r"^## ", rest, re.M)
    return rest[:nxt.start()] if nxt else rest


def sql_blocks(text: str) -> list[str]:
    """Every ```sql fenced block of the "## Querying" section."""
    return [b.strip() for b in re.findall(r"^```sql\s*\n(.*?)^```", section(text, "Querying"), re.M | re.S)]


def _top_level_split(s: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "([" 
        depth -= ch in ")]"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def named_columns(sql: str) -> list[str]:
    """The output columns the outermost select names: its aliases, or bare (qualified) column names."""
    flat = " ".join(sql.split())
    m = re.match(r"(?is)^select\s+(distinct\s+)?(.*)$", flat)
    assert m, f"not a select: {sql[:60]}"
    body, depth = m.group(2), 0
    for i in range(len(body)):  # the select list ends at the first top-level `from`
        depth += body[i] in "(["
        depth -= body[i] in ")]"
        if depth == 0 and re.match(r"(?i)\sfrom\s", body[i:i + 6]):
            body = body[:i]
            break
    names = []
    for item in _top_level_split(body):
        item = item.strip()
        alias = re.search(r"(?i)\sas\s+(\w+)$", item)
        if alias:
            names.append(alias.group(1))
        elif item != "*":
            assert re.fullmatch(r"[\w.]+", item), f"give {item!r} an alias (`as name`) so its column has a name"
            names.append(item.split(".")[-1])
    return names


def test_named_columns_reads_aliases_and_bare_names():
    assert named_columns("select a, t.b, round(avg(x), 3) as m, count(*) as n from t where y in (1, 2)") == \
        ["a", "b", "m", "n"]
    assert named_columns("select coalesce(a, b) as c\nfrom (select 1 as a, 2 as b)") == ["c"]


@pytest.fixture(scope="module")
def query_run(tmp_path_factory):
    """A tiny run: explanations (grade 4 called 0 included), randomisation, trials, both error tables, metrics."""
    from drray.evaluate.evaluate import evaluate_run

    run = write_run(tmp_path_factory.mktemp("readme") / "run", n=80, seed=7)
    evaluate_run(run, n_boot=50)
    return run


def test_readme_has_worked_queries():
    blocks = sql_blocks(README.read_text())
    assert len(blocks) >= 4, ("README.md needs a '## Querying' section with the worked ```sql blocks "
                              f"(off-by-one hits, worst maps per grade, errors by reason, grade 4 predicted 0); found {len(blocks)}")


def test_every_readme_query_runs_and_returns_the_columns_it_names(query_run):
    import drray

    blocks = sql_blocks(README.read_text())
    if not blocks:
        pytest.fail("README.md has no ```sql block under '## Querying'")
    for sql in blocks:
        df = drray.query(sql, run=query_run)
        assert list(df.columns) == named_columns(sql), sql
    # The synthetic run has rows for each worked question, so each answer is not empty.
    assert sum(len(drray.query(sql, run=query_run)) > 0 for sql in blocks) == len(blocks)


def test_a_bad_query_gives_duckdbs_message_and_a_non_zero_exit(query_run):
    import duckdb

    import drray

    sql = "select no_such_column from explanations"
    with pytest.raises(duckdb.Error) as info:
        drray.query(sql, run=query_run)
    expected = str(info.value).splitlines()[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "drray", "query", sql, "--run", str(query_run)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=50)
    assert p.returncode != 0
    assert expected in p.stderr and "no_such_column" in p.stderr
    ok = subprocess.run([sys.executable, "-m", "drray", "query", "select count(*) as n from errors", "--run",
                         str(query_run), "--format", "json"], capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=50)
    assert ok.returncode == 0 and '"n":3' in ok.stdout.replace(" ", "")
