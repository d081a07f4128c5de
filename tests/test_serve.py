"""The REST API on Ray Serve, over loopback: answers, batching, every bad input, limits, the OpenAPI schema, the config."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

import test_serve_support as support

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def retina_bytes() -> bytes:
    return support.RETINA.read_bytes()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _decode_png(text: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def _explain(client, data: bytes, **fields) -> httpx.Response:
    return client.post("/api/v1/explain", files={"image": ("eye.jpg", data, "image/jpeg")},
                       data={k: str(v) for k, v in fields.items()})


def _still_serving(client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    assert _explain(client, support.RETINA.read_bytes()).status_code == 200


# ------------------------------------------------------------------------------------------ answers
def test_explain_answers_grade_probabilities_and_maps(client, server, retina_bytes):
    from drray.serve.schemas import Explanation

    r = _explain(client, retina_bytes)
    assert r.status_code == 200, r.text
    body = r.json()
    Explanation.model_validate(body)  # what the OpenAPI schema promises
    assert body["grade"] in range(5) and body["grade_name"]
    assert len(body["probs"]) == 5 and abs(sum(body["probs"]) - 1) < 1e-5
    assert abs(body["referable_prob"] - sum(body["probs"][2:])) < 1e-5
    assert body["referable"] == (body["referable_prob"] >= 0.5)
    assert body["method"] == "gradcam" and body["target"] == "pred" and body["target_layer"].startswith("backbone.")
    assert body["quality_ok"] is True and body["warnings"] == []
    assert 0 <= body["peak_y"] <= 1 and 0 <= body["peak_x"] <= 1
    assert set(body["timings_ms"]) >= {"preprocess_ms", "model_ms", "render_ms", "total_ms"}
    assert body["model_id"].startswith("test_resnet-ordinal")
    cam, overlay = _decode_png(body["cam_png"]), _decode_png(body["overlay_png"])
    assert cam.shape == (support.SIZE, support.SIZE, 3)
    assert overlay.ndim == 3 and overlay.shape[0] == overlay.shape[1] >= 128
    mean = overlay.reshape(-1, 3).mean(axis=0)
    assert mean[0] > mean[2]  # drawn on the colour photograph (red fundus), not the grey network input


def test_json_multipart_and_the_in_process_predictor_agree(client, server, retina_bytes):
    from drray.inference import Predictor

    multipart = _explain(client, retina_bytes, method="gradcam++", target="referable").json()
    as_json = client.post("/api/v1/explain", json={"image_base64": base64.b64encode(retina_bytes).decode(),
                                                   "method": "GradCAM++", "target": "referable"}).json()
    local = Predictor.from_model_dir(server.model_dir).explain_image(retina_bytes, method="gradcam++",
                                                                     target="referable")
    np.testing.assert_allclose(multipart["probs"], local["probs"], atol=1e-5)
    np.testing.assert_allclose(as_json["probs"], local["probs"], atol=1e-5)
    assert multipart["method"] == as_json["method"] == "gradcam++"
    assert multipart["grade"] == as_json["grade"] == local["grade"]
    np.testing.assert_allclose([multipart["peak_y"], multipart["peak_x"]], [local["peak_y"], local["peak_x"]], atol=1e-6)
    assert _decode_png(multipart["cam_png"]).tolist() == _decode_png(base64.b64encode(local["cam_png"]).decode()).tolist()


def test_options_change_what_is_explained(client, retina_bytes):
    grade3 = client.post("/api/v1/explain", json={"image_base64": base64.b64encode(retina_bytes).decode(),
                                                  "target": 3}).json()
    assert grade3["target"] == "3" and grade3["target_class"] == 3
    on, off = _explain(client, retina_bytes).json(), _explain(client, retina_bytes, ben_graham="false").json()
    assert on["probs"] != off["probs"]
    plain = _decode_png(_explain(client, retina_bytes, overlay_alpha=0).json()["overlay_png"]).astype(int)
    strong = _decode_png(_explain(client, retina_bytes, overlay_alpha=1).json()["overlay_png"]).astype(int)
    assert np.abs(plain - strong).mean() > 10  # 0: the photograph alone, 1: the map alone
    small = _decode_png(_explain(client, retina_bytes, overlay_size=96).json()["overlay_png"])
    assert small.shape == (96, 96, 3)


def test_a_photograph_without_a_fundus_gets_an_answer_with_a_warning(client):
    r = _explain(client, _png(np.full((300, 400, 3), 128, np.uint8)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["quality_ok"] is False and "field of view" in body["warnings"][0]
    assert body["grade"] in range(5)


def test_concurrent_requests_are_batched_and_answered_alike(client, server, retina_bytes):
    single = _explain(client, retina_bytes).json()

    async def many(n: int):
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as ac:
            return await asyncio.gather(*[ac.post("/api/v1/explain", files={"image": ("e.jpg", retina_bytes)})
                                          for _ in range(n)])

    answers = [r.json() for r in asyncio.run(many(8))]
    assert all("probs" in a for a in answers), answers
    assert max(a["batch_size"] for a in answers) > 1  # waited together, explained in one pass
    for a in answers:
        np.testing.assert_allclose(a["probs"], single["probs"], atol=1e-5)


def test_model_health_and_schema(client):
    info = client.get("/api/v1/model").json()
    assert info["backbone"] == "test_resnet" and info["head"] == "ordinal" and info["input_size"] == support.SIZE
    assert info["grades"]["4"] == "proliferative DR" and info["target_layer"].startswith("backbone.")
    assert info["methods"] == ["gradcam", "gradcam++"] and "referable" in info["targets"]
    assert info["max_batch_size"] == support.MAX_BATCH_SIZE
    assert info["max_body_bytes"] == int(support.MAX_BODY_MB * 2**20)
    assert client.get("/healthz").json() == {"status": "ok", "model_id": info["model_id"]}
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/api/v1/explain"]["post"]
    assert set(op["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"200", "413", "415", "422"} <= set(op["responses"])
    assert {"Explanation", "ModelInfo", "Error"} <= set(schema["components"]["schemas"])
    assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"


# ------------------------------------------------------------------------------------- bad input
def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 3]


BAD_REQUESTS = {
    "not an image": (dict(files={"image": ("x.jpg", b"certainly not an image")}), 422, "not_an_image", "not a recognised"),
    "empty file": (dict(files={"image": ("x.jpg", b"")}), 422, "empty_file", "empty"),
    "truncated JPEG": ("truncated", 422, None, "uploaded image"),
    "unknown method": (dict(files={"image": ("x.jpg", "RETINA")}, data={"method": "nope"}), 422, "unknown_method",
                       "gradcam, gradcam++"),
    "method not served": (dict(files={"image": ("x.jpg", "RETINA")}, data={"method": "xgradcam"}), 422,
                          "unknown_method", "this server offers"),
    "unknown target": (dict(files={"image": ("x.jpg", "RETINA")}, data={"target": "7"}), 422, "unknown_target",
                       "pred, referable, score, 0, 1, 2, 3, 4"),
    "bad option type": (dict(files={"image": ("x.jpg", "RETINA")}, data={"overlay_alpha": "2"}), 422,
                        "invalid_request", "overlay_alpha"),
    "unknown option": (dict(files={"image": ("x.jpg", "RETINA")}, data={"methd": "gradcam"}), 422,
                       "invalid_request", "methd"),
    "no image field": (dict(files={"photo": ("x.jpg", "RETINA")}), 422, "invalid_request", "`image`"),
    "plain text body": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415,
                        "unsupported_media_type", "multipart/form-data"),
    "no body": (dict(), 415, "unsupported_media_type", "multipart/form-data"),
    "bad JSON": (dict(content=b"{", headers={"content-type": "application/json"}), 400, "invalid_request", "JSON"),
    "JSON not an object": (dict(json=[1, 2]), 422, "invalid_request", "image_base64"),
    "JSON without image": (dict(json={"method": "gradcam"}), 422, "invalid_request", "image_base64"),
    "bad base64": (dict(json={"image_base64": "%%%"}), 422, "bad_base64", "base64"),
    "too many pixels": ("pixels", 413, "image_too_large", "above the limit"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(client, retina_bytes, case):
    request, status, reason, words = BAD_REQUESTS[case]
    if request == "truncated":
        request = dict(files={"image": ("x.jpg", _truncated(retina_bytes))})
    elif request == "pixels":  # 2000 x 2000 = 4 Mpx > the 3 Mpx limit, but a small file
        request = dict(files={"image": ("big.png", _png(np.zeros((2000, 2000, 3), np.uint8)))})
    elif "files" in request:
        request = {**request, "files": {k: (n, retina_bytes if v == "RETINA" else v)
                                        for k, (n, v) in request["files"].items()}}
    r = client.post("/api/v1/explain", **request)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail", "reason"}
    if reason:
        assert body["reason"] == reason
    else:
        assert body["reason"] in ("truncated_image", "corrupt_image")
    assert words in body["detail"]
    _still_serving(client)


def test_a_declared_large_body_gets_413_before_it_is_sent(client, server):
    declared = 50 * 2**20
    head = (f"POST /api/v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {declared}\r\n\r\n")
    answer, sent = support.raw_request(server.url, head, (b"x" * 65536 for _ in range(4)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer
    assert sent < declared
    _still_serving(client)


def test_a_streamed_body_is_cut_off_with_413_once_past_the_limit(client, server):
    head = ("POST /api/v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")

    def framed(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def chunks():  # a well-formed multipart file part that never ends
        yield framed(b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
                     b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(400):  # up to 25 MiB, far past the 1 MiB limit
            time.sleep(0.002)
            yield framed(b"y" * 65536)

    answer, sent = support.raw_request(server.url, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body_too_large" in answer
    assert sent < 20 * 2**20  # answered long before the client was done
    json_head = head.replace("multipart/form-data; boundary=b", "application/json")
    answer, _ = support.raw_request(server.url, json_head, (framed(b"[" + b"1," * 32768) for _ in range(400)))
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer, answer[:300]
    _still_serving(client)


# --------------------------------------------------------------------------------- property-based
SCHEMATHESIS_EXAMPLES = 20
"""Generated requests per operation and mode (valid / invalid by the schema): bounded, so the run takes seconds."""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_openapi_schema_property_based_no_server_errors(server, mode):
    """Requests generated from the app's own OpenAPI schema: never a 5xx, every answer as documented.

    Each operation's hypothesis strategy is driven here (schemathesis' pytest loader does not run
    under pytest 9 in this version).
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                     status_code_conformance)
    from schemathesis.generation import GenerationMode

    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} == {"/api/v1/explain", "/api/v1/model", "/healthz"}
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: list[int] = []
    for op in operations:
        if mode == "negative" and op.method.upper() != "POST":
            continue  # the GETs take no parameters: there is nothing invalid to send them
        strategy = op.as_strategy(generation_mode=GenerationMode(mode))

        @settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            response = case.call_and_validate(checks=checks, timeout=60)
            seen.append(response.status_code)

        run()
    assert seen and all(code < 500 for code in seen)


# ----------------------------------------------------------------------------------- config, args
def test_serve_config_yaml_builds_the_application():
    import yaml
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from drray.serve.args import AppArgs

    raw = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(raw)
    assert config.http_options.host == "127.0.0.1"
    (app_cfg,) = config.applications
    assert app_cfg.import_path == "drray.serve.app:build_app" and app_cfg.route_prefix == "/"
    args = AppArgs.model_validate(app_cfg.args)
    assert args.model_dir == "runs/demo/model" and args.run_dir == "runs/demo"
    names = {d.name for d in app_cfg.deployments}
    assert names == {"Explainer", "Ingress"}
    from drray.serve.app import build_app

    app = call_user_app_builder_with_args_if_necessary(build_app, app_cfg.args)
    assert type(app).__name__ == "Application"


def test_app_args_say_what_is_wrong():
    from pydantic import ValidationError

    from drray.serve.app import explainer_options
    from drray.serve.args import AppArgs

    with pytest.raises(ValidationError, match="max_batch_size must be >= 1"):
        AppArgs(max_batch_size=0)
    with pytest.raises(ValidationError, match="Extra inputs"):
        AppArgs(model_dri="x")
    scaled = explainer_options(AppArgs(autoscaling_config={"min_replicas": 1, "max_replicas": 3}))
    assert "num_replicas" not in scaled and scaled["autoscaling_config"]["max_replicas"] == 3
    fixed = explainer_options(AppArgs(num_replicas=2, num_gpus=0.5, max_batch_size=8))
    assert fixed["num_replicas"] == 2 and fixed["ray_actor_options"]["num_gpus"] == 0.5
    assert fixed["user_config"]["max_batch_size"] == 8


def test_the_model_cards_chosen_method_is_served_first(tmp_path):
    """Layer selection's method (the card's cam_method) becomes the API's and the page's default."""
    from drray.serve.app import with_chosen_method
    from drray.serve.args import AppArgs

    support.make_model_dir(tmp_path / "model")
    args = AppArgs(model_dir=str(tmp_path / "model"), methods=["gradcam", "gradcam++"])
    assert with_chosen_method(args).methods == ["gradcam", "gradcam++"]  # no choice recorded: as configured
    card = json.loads((tmp_path / "model" / "model.json").read_text())
    (tmp_path / "model" / "model.json").write_text(json.dumps({**card, "cam_method": "xgradcam"}))
    assert with_chosen_method(args).methods == ["xgradcam", "gradcam", "gradcam++"]
    (tmp_path / "model" / "model.json").write_text(json.dumps({**card, "cam_method": "gradcam++"}))
    assert with_chosen_method(args).methods == ["gradcam++", "gradcam"]
    missing = AppArgs(model_dir=str(tmp_path / "nowhere"))
    assert with_chosen_method(missing).methods == missing.methods  # the replica reports the missing dir


def test_importing_the_app_imports_no_torch_or_gradio():
    code = ("import sys, drray.serve, drray.serve.app, drray.serve.run; "
            "heavy = [m for m in ('torch', 'gradio', 'timm') if m in sys.modules]; assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_explainer_user_config_is_checked(server):
    from drray.serve.args import AppArgs
    from drray.serve.explainer import PhotoExplainer

    core = PhotoExplainer(AppArgs(model_dir=str(server.model_dir), run_dir=None, max_batch_size=2,
                                  max_ongoing_requests=4))
    assert core.batching() == {"max_batch_size": 2, "batch_wait_timeout_s": 0.01}
    with pytest.raises(ValueError, match="unknown Explainer user_config"):
        core.reconfigure({"max_batch": 4})
    with pytest.raises(ValueError, match=">= 1"):
        core.reconfigure({"batch_wait_timeout_s": 0.2, "max_batch_size": 0})
    assert core.batching() == {"max_batch_size": 2, "batch_wait_timeout_s": 0.01}  # nothing half-applied
    core.reconfigure({"batch_wait_timeout_s": 0.5})  # what `serve deploy` sends when only the wait changes
    assert core.batching() == {"max_batch_size": 2, "batch_wait_timeout_s": 0.5}
    assert json.dumps(core.describe())  # plain values only


@pytest.mark.timeout(300)
def test_run_server_blocks_until_ctrl_c_and_shuts_down_cleanly(server, tmp_path):
    """`run_server(..., block=True)` as `drray serve` will call it: own local Ray, quiet stdout, Ctrl-C stops all."""
    import os
    import signal

    port = support.free_port()
    code = ("import sys; from drray.config import ServeConfig; from drray.serve.run import run_server; "
            f"run_server({str(server.model_dir)!r}, ServeConfig(port={port}, num_cpus=0.5, max_body_mb=1), "
            "run_dir=None, block=True)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert _explain(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60),
                        support.RETINA.read_bytes()).status_code == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-3000:]
        # run_server prints nothing (the CLI says where it serves); Ray's own processes may log to stdout.
        ours = [line for line in out.decode().splitlines() if line.strip() and ")\x1b[0m " not in line
                and not line.lstrip().startswith("(")]
        assert ours == []
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
