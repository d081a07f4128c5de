"""The `drray` command as a person runs it: real processes, exit codes, what it prints."""

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.timeout(180)


def drray(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drray", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=170)


def test_help_lists_every_command():
    r = drray("--help")
    assert r.returncode == 0
    for cmd in ("synth", "ingest", "train", "tune", "explain", "demo"):
        assert cmd in r.stdout


def test_synth_writes_images_masks_and_manifest(tmp_path: Path):
    out = tmp_path / "synth"
    r = drray("synth", "--n", "6", "--size", "64", "--seed", "3", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and "manifest" in r.stdout
    n, ids = duckdb.sql(
        f"select count(*), count(distinct image_id) from '{out}/manifest.parquet'").fetchall()[0]
    assert n == ids == 6
    assert len(list((out / "images").glob("*.jpg"))) == 6
    assert len(list((out / "masks" / "od").glob("*.png"))) == 6


def test_ingest_nothing_usable_exits_non_zero(tmp_path: Path):
    root = tmp_path / "empty"
    root.mkdir()
    r = drray("ingest", "--source", "folder", "--root", str(root), "--out", str(tmp_path / "out"))
    assert r.returncode != 0
    assert "error" in r.stderr and str(root) in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_override_is_a_clear_error(tmp_path: Path):
    r = drray("synth", "--out", str(tmp_path), "synth.n=0")
    assert r.returncode == 2
    assert "synth.n must be >= 1" in r.stderr and "Traceback" not in r.stderr


def test_explain_without_model_is_a_clear_error(tmp_path: Path):
    r = drray("synth", "--n", "2", "--size", "64", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    r = drray("explain", "--manifest", str(tmp_path / "manifest.parquet"))
    assert r.returncode == 2
    assert "not a model dir" in r.stderr


def test_missing_manifest_is_a_clear_error(tmp_path: Path):
    r = drray("tune", "--manifest", str(tmp_path / "nope.parquet"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_query_reads_the_run_tables(tmp_path: Path):
    assert drray("synth", "--n", "4", "--size", "64", "--out", str(tmp_path)).returncode == 0
    r = drray("query", "select count(*) as n from manifest", "--run", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["n", "4"]
    out = tmp_path / "labels.csv.out.csv"
    r = drray("query", "select image_id, label from manifest order by 1", "--run", str(tmp_path),
              "--output", str(out))
    assert r.returncode == 0 and len(out.read_text().splitlines()) == 5


def test_query_names_the_tables_a_run_has(tmp_path: Path):
    assert drray("synth", "--n", "2", "--size", "64", "--out", str(tmp_path)).returncode == 0
    r = drray("query", "select * from trials", "--run", str(tmp_path))
    assert r.returncode == 2
    assert "tables in" in r.stderr and "manifest" in r.stderr
