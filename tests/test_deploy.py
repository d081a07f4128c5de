"""KubeRay manifests: the fields of KubeRay's ray.io/v1 kinds, entrypoints drray's CLI accepts, and a
RayService whose serveConfigV2 is serve_config.yaml itself."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"
RAYJOBS = sorted(KUBERAY.glob("rayjob-*.yaml"))


def load(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1", path.name
    return doc


def check_cluster(spec: dict, where: str) -> None:
    assert spec["rayVersion"] == "2.60.0", where  # the Ray the project pins
    assert spec["enableInTreeAutoscaling"] is True, where
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    images = {head["image"]}
    assert head["resources"]["requests"] == head["resources"]["limits"], where
    assert spec["workerGroupSpecs"], where
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (where, group["groupName"])
        assert group["maxReplicas"] > group["minReplicas"], f"{where}: {group['groupName']} cannot autoscale"
        worker = group["template"]["spec"]["containers"][0]
        images.add(worker["image"])
        assert worker["resources"]["requests"]["cpu"], where
    assert len(images) == 1, f"{where}: head and workers run different images {images}"


def test_there_is_a_rayjob_for_tune_and_for_explain():
    assert {p.name for p in RAYJOBS} >= {"rayjob-tune.yaml", "rayjob-explain.yaml"}


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_fields_and_an_entrypoint_drray_accepts(path):
    from drray.cli import build_parser
    from drray.config import Config

    doc = load(path)
    assert doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and "env_vars" in runtime_env
    check_cluster(spec["rayClusterSpec"], path.name)
    words = shlex.split(spec["entrypoint"])
    assert words[:3] == ["python", "-m", "drray"], "the image's interpreter, with drray installed"
    args = build_parser().parse_args(words[3:])
    assert args.command in ("tune", "explain", "train")
    if args.config:
        assert (ROOT / args.config).is_file(), args.config
    Config.from_yaml(ROOT / args.config if args.config else None, args.overrides)  # every override is valid
    # Inputs and outputs live where every pod reads them: object storage here.
    for where in (args.manifest, args.out) + ((args.model,) if getattr(args, "model", None) else ()):
        assert where.startswith("s3://"), where


def test_rayservice_serves_serve_config_yaml_with_only_the_cluster_values_changed():
    """serveConfigV2 is serve_config.yaml but for where the model lives and where the proxy binds in a pod."""
    doc = load(KUBERAY / "rayservice.yaml")
    assert doc["kind"] == "RayService"
    spec = doc["spec"]
    embedded = yaml.safe_load(spec["serveConfigV2"])
    local = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert local["http_options"]["host"] == "127.0.0.1" and embedded["http_options"]["host"] == "0.0.0.0"
    for app in embedded["applications"]:
        assert app["args"]["model_dir"].startswith("s3://") and app["args"]["run_dir"].startswith("s3://")
    for cfg in (embedded, local):
        cfg["http_options"].pop("host")
        for app in cfg["applications"]:
            app["args"].pop("model_dir")
            app["args"].pop("run_dir")
    assert embedded == local
    check_cluster(spec["rayClusterConfig"], "rayservice.yaml")
