"""Object storage end to end against a real S3 HTTP endpoint on loopback (moto's server, started by the tests):
ingest, training's export, explain, query, with the same bad-input behaviour as local paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_fixtures import make_aptos, write_corrupt
from drray import storage
from drray.storage import RemotePath

pytestmark = pytest.mark.timeout(240)


def upload(local: Path, uri: str) -> None:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            storage.write_bytes(f"{uri}/{f.relative_to(local).as_posix()}", f.read_bytes())


def drray_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drray", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=200, env={**os.environ, "TQDM_DISABLE": "1"})


def test_storage_round_trips_and_lists_objects(bucket):
    storage.write_json(f"{bucket}/a/x.json", {"qwk": float("nan"), "n": 3})
    assert storage.read_json(f"{bucket}/a/x.json") == {"qwk": None, "n": 3}
    storage.write_bytes(f"{bucket}/a/b/c.png", b"\x89PNG")
    root = RemotePath(bucket) / "a"
    assert root.is_dir() and (root / "x.json").is_file() and not (root / "nope").exists()
    assert [p.name for p in root.iterdir()] == ["b", "x.json"]
    assert [p.relative_to(root).as_posix() for p in root.rglob("*.png")] == ["b/c.png"]
    assert (root / "b" / ".." / "x.json") == root / "x.json"


def test_unknown_scheme_and_missing_bucket_are_clear_errors(s3_server, tmp_path):
    with pytest.raises(ValueError, match="cannot open 'nope://x/y'"):
        storage.filesystem("nope://x/y")
    assert not storage.exists("s3://drray-no-such-bucket/run/manifest.parquet")
    r = drray_cli("query", "select 1", "--run", "s3://drray-no-such-bucket/run", cwd=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing fell back to a local folder named like the URI


@pytest.fixture
def aptos_in_bucket(bucket, tmp_path):
    """An APTOS-layout tree in the bucket, with one corrupt image and one id that climbs out of its folder."""
    local = tmp_path / "aptos2019"
    make_aptos(local)
    write_corrupt(local / "train_images" / "bad.png")
    with (local / "train.csv").open("a") as f:
        f.write("bad,1\n../test_images/t000,2\n")
    upload(local, f"{bucket}/aptos2019")
    return bucket


def test_ingest_from_and_to_object_storage_keeps_every_rule(ray_session, aptos_in_bucket, tmp_path):
    from drray.data.ingest import ingest, read_errors, read_manifest

    bucket = aptos_in_bucket
    result = ingest("aptos2019", f"{bucket}/aptos2019", f"{bucket}/runs/aptos")
    assert result.manifest_path == f"{bucket}/runs/aptos/manifest.parquet"
    manifest = read_manifest(result.manifest_path)
    assert sorted(manifest["image_id"]) == ["a000", "a001", "a002", "a003", "t000", "t001"]
    assert all(p.startswith(f"{bucket}/aptos2019/") for p in manifest["path"])
    errors = read_errors(result.errors_path)
    assert sorted(errors["reason"]) == ["bad_image_id", "corrupt_image"]
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()


def test_explain_train_export_and_query_on_object_storage(ray_session, aptos_in_bucket, tmp_path):
    import torch

    from drray.config import PreprocessConfig
    from drray.data.ingest import ingest
    from drray.explain.pipeline import explain
    from drray.models.model import create_model, load_model, save_model

    bucket = aptos_in_bucket
    ingest("aptos2019", f"{bucket}/aptos2019", f"{bucket}/runs/aptos")
    torch.manual_seed(0)
    model = create_model("test_resnet", image_size=32, preprocess=PreprocessConfig(image_size=32))
    save_model(model, f"{bucket}/models/tiny")
    assert load_model(f"{bucket}/models/tiny").card.model_id == model.card.model_id

    out = f"{bucket}/runs/aptos"
    result = explain(f"{out}/manifest.parquet", f"{bucket}/models/tiny", out, methods=["gradcam"])
    assert result.rows_written == 6 and result.errors == {}
    again = explain(f"{out}/manifest.parquet", f"{bucket}/models/tiny", out, methods=["gradcam"])
    assert again.rows_written == 0 and again.skipped_done == 6

    r = drray_cli("query", "select count(*) as n, count(distinct image_id) as ids from explanations",
                  "--run", out, "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [{"n": 6, "ids": 6}]
    r = drray_cli("query", "select command, reason from errors order by reason", "--run", out, "--format", "csv",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["command,reason", "ingest,bad_image_id", "ingest,corrupt_image"]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith("s3")]  # no local stand-in for the bucket


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_training_with_storage_path_on_object_storage_exports_the_best_model(ray_session, bucket, tmp_path):
    from test_train import make_tiny_set, tiny_config

    from drray.models.model import load_model
    from drray.training.train import train

    manifest = make_tiny_set(tmp_path / "data", n=24)
    cfg = tiny_config(tmp_path, "train.epochs=1", f"train.storage_path={bucket}/ray")
    result = train(cfg, f"{bucket}/runs/one", manifest=manifest)
    assert result.model_dir == f"{bucket}/runs/one/model"
    assert load_model(result.model_dir).card.timm_name == "test_resnet"
    assert storage.is_file(f"{bucket}/runs/one/train_metrics.json")
    assert RemotePath(f"{bucket}/ray").is_dir()


def test_the_cli_ingests_into_a_bucket_and_keeps_its_log_there(aptos_in_bucket, tmp_path):
    bucket = aptos_in_bucket
    r = drray_cli("ingest", "--source", "aptos2019", "--root", f"{bucket}/aptos2019", "--out", f"{bucket}/runs/cli",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{bucket}/runs/cli/manifest.parquet" in r.stdout and "bad_image_id" in r.stdout
    assert storage.is_file(f"{bucket}/runs/cli/logs/drray.log")
    assert "AWS_SECRET_ACCESS_KEY" not in storage.read_text(f"{bucket}/runs/cli/logs/drray.log")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in r.stdout + r.stderr
    missing = drray_cli("ingest", "--source", "aptos2019", "--root", f"{bucket}/nothing-here", "--out",
                        f"{bucket}/runs/none", cwd=tmp_path)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
