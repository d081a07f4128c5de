"""report.html: self-contained (nothing fetched at view time), galleries by rule, rendered by headless Chromium."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_evaluate import synthetic_explanations, write_explanations, write_side_tables

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """Real synthetic photographs with masks (ingested), a model card, and synthetic explanation rows for them."""
    import torch

    from drray.config import PreprocessConfig, SynthConfig
    from drray.data.ingest import ingest, read_manifest
    from drray.data.synth import generate
    from drray.evaluate.evaluate import evaluate_run
    from drray.models.model import create_model, save_model

    run = tmp_path_factory.mktemp("report") / "run"
    generate(SynthConfig(n=40, size=96, seed=2), run / "synth", parallel=False)
    ingest("synth", run / "synth", run, split_fractions=(0.2, 0.0, 0.8))
    torch.manual_seed(0)
    save_model(create_model("test_resnet", image_size=64, preprocess=PreprocessConfig(image_size=64)), run / "model")
    manifest = read_manifest(run / "manifest.parquet")
    test = manifest[manifest["split"] == "test"]
    expl = synthetic_explanations(image_ids=test["image_id"].tolist(), labels=[int(v) for v in test["label"]], seed=4)
    write_explanations(run, expl)
    write_side_tables(run, expl)
    metrics = evaluate_run(run, n_boot=100)
    return run, metrics


@pytest.fixture(scope="module")
def report_html(photo_run):
    from drray.evaluate.report import report

    run, metrics = photo_run
    path = report(run, metrics=metrics)
    assert path == str(run / "report.html")
    return Path(path).read_text()


def test_report_references_no_external_resource(report_html):
    assert not re.search(r"https?://", report_html), "the report must load nothing at view time"
    srcs = re.findall(r'<img[^>]*\bsrc="([^"]*)"', report_html)
    assert len(srcs) > 10 and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    assert "<link" not in report_html and "<script" not in report_html and "@import" not in report_html


def test_report_holds_every_section(report_html, photo_run):
    _, m = photo_run
    for text in ("Quadratic weighted kappa", "true \\ predicted", "ROC curve", "calibration", "Observations",
                 "Off by one grade", "Gross failures", "Exact successes", "Typical maps per grade", "Tune trials",
                 "test_efficientnet", "Model randomisation", "microaneurysms"):
        assert text in report_html, text
    assert f"{m['qwk']:.3f}" in report_html
    # The localisation table sets each lift beside its ideal (the masks drawn on the map's grid).
    loc = next(iter(m["groups"][0]["methods"].values()))["localisation"]["all"]
    assert "Ideal lift (median)" in report_html
    assert f"{loc['ideal_lift']:.1f}× ({loc['ideal_lift_median']:.1f}×)" in report_html
    for sentence in m["observations"]:
        assert sentence.split(": ", 1)[1][:40].replace("'", "&#39;") in report_html


def test_galleries_follow_their_rules_and_show_photo_map_and_masks(photo_run):
    from drray.evaluate.report import build_context
    from drray.evaluate.tables import read_explanations

    run, m = photo_run
    ctx = build_context(run, m, read_explanations(run / "explanations"), gallery_size=6)
    by = {g["title"]: g for g in ctx["galleries"]}
    exact, off, gross = by["Exact successes"]["cards"], by["Off by one grade"]["cards"], by["Gross failures"]["cards"]
    assert exact and off and gross
    assert all(c["pred"] == c["label"] for c in exact)
    assert all(abs(c["pred"] - c["label"]) == 1 for c in off)
    errors = [abs(c["pred"] - c["label"]) for c in gross]
    assert all(e >= 2 for e in errors) and errors == sorted(errors, reverse=True)
    assert len(exact) <= 6 and by["Exact successes"]["available"] >= len(exact)
    for c in exact + off + gross:
        assert c["photo"].startswith("data:image/jpeg") and c["overlay"].startswith("data:image/png")
        assert c["lesions"] is not None  # every synthetic photograph has masks (optic disc at least)
        assert c["peak"] in ("peak on a lesion", "peak missed the lesions", "no lesions marked")
    # Exact successes take the grades in turn: the first cards cover distinct grades.
    firsts = [c["label"] for c in exact[:3]]
    assert len(set(firsts)) == len(firsts)
    typical = ctx["typical"]["grades"]
    assert typical and all(len(g["cards"]) <= 3 for g in typical)


def test_a_small_group_says_too_few_instead_of_a_number(tmp_path):
    from drray.evaluate.report import report

    run = tmp_path / "run"
    write_explanations(run, synthetic_explanations(14, seed=5, methods=("gradcam",)))
    html = Path(report(run, out=tmp_path / "out", n_boot=20)).read_text()
    assert "too few images" in html and "photograph unavailable" in html  # no manifest: no photographs
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html"]
    assert not (run / "report.html").exists()


def test_outline_draws_each_mask_type_and_the_peak():
    from drray.data.mask_bits import mask_bits
    from drray.evaluate.photos import LESION_COLOURS, PEAK_COLOUR, outline

    img = np.zeros((64, 64, 3), np.uint8)
    ma = np.zeros((64, 64), bool)
    ma[10:20, 10:20] = True
    od = np.zeros((64, 64), bool)
    od[40:50, 40:50] = True
    drawn, types = outline(img, mask_bits({"ma": ma, "od": od}, (64, 64)), peak=(30.0, 30.0))
    assert types == ("ma", "od")
    assert tuple(drawn[10, 15]) == LESION_COLOURS["ma"] and tuple(drawn[40, 45]) == LESION_COLOURS["od"]
    assert (drawn == np.array(PEAK_COLOUR, np.uint8)).all(axis=2).any()
    assert not img.any()  # the input is left alone


@pytest.mark.timeout(90)
def test_report_renders_in_headless_chromium(report_html, photo_run, tmp_path):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("no Chromium here: apt-get install chromium (Debian) to run the browser check")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (drray[dev]); "
                                   "it drives the system's /usr/bin/chromium, no `playwright install` needed")
    run, _ = photo_run
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        # A fresh profile per run (playwright's user_data_dir is Chromium's --user-data-dir).
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            headless=True, viewport={"width": 1280, "height": 900},
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            page.on("request", lambda req: requests.append(req.url))
            page.goto((run / "report.html").as_uri(), wait_until="load")
            images = page.evaluate("""Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])""")
            cards = page.locator(".card").count()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert not errors, errors
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert len(images) > 10 and all(ok and w > 0 for _, ok, w in images), [i for i in images if not i[2]]
    assert any("ROC" in alt for alt, _, _ in images) and any("calibration" in alt for alt, _, _ in images)
    assert cards >= 5
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, "the screenshot is blank"
