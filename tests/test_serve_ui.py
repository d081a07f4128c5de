"""The page at /ui through gradio_client (Explain and Explore), its file sandbox, and the Explore queries."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from PIL import Image

import test_serve_support as support
from drray.schema import GRADE_NAMES

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def page(server):
    from gradio_client import Client

    return Client(f"{server.url}/ui/", verbose=False)


def test_the_page_explains_an_example_like_the_api(page, server):
    from gradio_client import handle_file

    grade, referable, warnings, probs, overlay, cam, details = page.predict(
        handle_file(str(support.RETINA)), "gradcam", "pred", 0.4, "as trained", api_name="/explain")
    api = httpx.post(f"{server.url}/api/v1/explain", files={"image": support.RETINA.read_bytes()}, timeout=60).json()
    assert grade == f"## Grade {api['grade']}: {api['grade_name']}"
    assert "P(moderate NPDR or worse)" in referable and warnings == ""
    assert probs["columns"] == ["grade", "probability"] and probs["mark"] == "bar"
    bars = {label: value for label, value in probs["data"]}  # the bar chart: "2 moderate NPDR" -> P
    assert sorted(bars) == [f"{g} {name}" for g, name in enumerate(GRADE_NAMES)]
    np.testing.assert_allclose([bars[k] for k in sorted(bars)], api["probs"], atol=1e-5)
    over = np.asarray(Image.open(overlay))
    assert over.ndim == 3 and over.shape[0] == over.shape[1] >= 128
    assert np.asarray(Image.open(cam)).shape[:2] == (support.SIZE, support.SIZE)
    assert details["method"] == "gradcam" and details["model_id"] == api["model_id"]
    # The opacity slider redraws the same map over the same photograph, without the model.
    redrawn = np.asarray(Image.open(page.predict(1.0, api_name="/redraw")))
    assert redrawn.shape == over.shape and np.abs(redrawn.astype(int) - over.astype(int)).mean() > 5


def test_the_page_shows_a_quality_warning_and_refuses_a_bad_image(page, tmp_path):
    from gradio_client import handle_file

    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(flat)
    out = page.predict(handle_file(str(flat)), "gradcam++", "referable", 0.5, "off", api_name="/explain")
    assert "Quality warning" in out[2] and out[6]["method"] == "gradcam++"
    big = tmp_path / "big.png"  # 4 Mpx, above the server's 3 Mpx limit
    Image.fromarray(np.zeros((2000, 2000, 3), np.uint8)).save(big)
    with pytest.raises(Exception, match="above the limit"):
        page.predict(handle_file(str(big)), "gradcam", "pred", 0.4, "as trained", api_name="/explain")


def test_explore_searches_the_run_directory(page):
    gallery, status = page.predict("any", "any", "any", "any", "any", "any", 48, api_name="/search")
    assert len(gallery) == 8 and "8 rows match" in status
    gallery, status = page.predict("any", "any", "any", "hit a lesion", "synth", "gradcam", 48, api_name="/search")
    assert len(gallery) == 2  # rows 0 and 3 of the six "synth" rows hit
    for item in gallery:
        assert "peak on a lesion" in item["caption"]
    _, status = page.predict("unknown", "any", "exact", "any", "any", "any", 48, api_name="/search")
    assert "no rows match" in status


@pytest.mark.parametrize("path", ["/etc/passwd", "{model}/model.json", "{run}/manifest.parquet",
                                  "{repo}/pyproject.toml", "../../../../etc/passwd"])
def test_the_page_serves_no_file_outside_its_examples_and_uploads(server, path):
    from pathlib import Path

    target = path.format(model=server.model_dir, run=server.run_dir, repo=Path(__file__).parents[1])
    r = httpx.get(f"{server.url}/ui/gradio_api/file={target}", timeout=30)
    assert r.status_code in (403, 404), (target, r.status_code)
    assert b"root:" not in r.content
    example = httpx.get(f"{server.url}/ui/gradio_api/file={support.RETINA}", timeout=30)
    assert example.status_code == 200 and example.content == support.RETINA.read_bytes()


def test_uploads_to_the_page_obey_the_body_limit(server, page):
    host = server.url
    big = 50 * 2**20
    head = (f"POST /ui/gradio_api/upload HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {big}\r\n\r\n")
    answer, sent = support.raw_request(host, head, (b"z" * 65536 for _ in range(4)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    chunked = head.replace(f"Content-Length: {big}", "Transfer-Encoding: chunked")

    def framed(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def chunks():
        yield framed(b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.jpg"\r\n'
                     b"Content-Type: image/jpeg\r\n\r\n")
        for _ in range(400):
            time.sleep(0.002)
            yield framed(b"z" * 65536)

    answer, sent = support.raw_request(host, chunked, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent < 20 * 2**20
    assert httpx.get(f"{server.url}/healthz", timeout=30).json()["status"] == "ok"


# ------------------------------------------------------------------------- Explore, without the page
def test_explore_filters_rows(server):
    from drray.serve.explore import ExploreFilter, explanation_row, explore_summary, find_explanations

    summary = explore_summary(server.run_dir)
    assert summary["ok"] and summary["rows"] == 8
    assert summary["datasets"] == ["other", "synth"] and summary["methods"] == ["gradcam"]
    rows, total = find_explanations(server.run_dir, ExploreFilter(dataset="other"))
    assert total == 2 and {r["image_id"] for r in rows} == {"img6", "img7"}
    _, unlabelled = find_explanations(server.run_dir, ExploreFilter(true_grade="unknown"))
    assert unlabelled == 1
    rows, total = find_explanations(server.run_dir, ExploreFilter(peak_hit="no lesion masks"))
    assert total == 2 and all(r["pointing_hit"] is None for r in rows)
    labelled = find_explanations(server.run_dir, ExploreFilter(true_grade=None), limit=100)[0]
    buckets = sum(find_explanations(server.run_dir, ExploreFilter(error=b))[1]
                  for b in ("exact", "off by one", "off by two or more"))
    assert buckets == sum(r["label"] is not None for r in labelled)  # every labelled row in one bucket
    for row in find_explanations(server.run_dir, ExploreFilter(error="off by two or more"))[0]:
        assert abs(row["pred"] - row["label"]) >= 2
    row = explanation_row(server.run_dir, "img0", "gradcam")
    assert row["image_id"] == "img0" and len(row["probs"]) == 5 and row["overlay_png"].endswith("bytes>")
    assert row["manifest"]["patient_id"] == "p0" and row["pred_name"]


def test_explore_says_what_is_wrong(server, tmp_path):
    from drray.serve.explore import ExploreFilter, explanation_row, explore_summary, find_explanations

    assert "does not exist" in explore_summary(tmp_path / "nowhere")["message"]
    assert "no explanations table" in explore_summary(tmp_path)["message"]
    assert not explore_summary(None)["ok"]
    with pytest.raises(ValueError, match="not an ICDR grade"):
        find_explanations(server.run_dir, ExploreFilter(true_grade=9))
    with pytest.raises(ValueError, match="off by one"):
        find_explanations(server.run_dir, ExploreFilter(error="off by three"))
    with pytest.raises(KeyError, match="no explanation of image"):
        explanation_row(server.run_dir, "img0'; drop table x; --", "gradcam")


def test_the_shipped_examples_are_small_photographs():
    from drray.serve.example_images import RETINA, SYNTH_GRADES, example_paths

    paths = example_paths()
    assert paths[0].name == RETINA and len(paths) == 1 + len(SYNTH_GRADES)
    for p in paths:
        assert p.stat().st_size < 200_000
        img = Image.open(p)
        assert img.format == "JPEG" and img.mode == "RGB" and min(img.size) >= 256
