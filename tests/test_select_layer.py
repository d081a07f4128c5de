"""Choosing the CAM layer and method by measured localisation (drray.explain.select_layer) and using the choice."""

from __future__ import annotations

import json
import math

import pytest

from drray.config import CamConfig, ExplainConfig
from drray.explain.select_layer import Candidate, NotEnoughMasks, hit_rate_standard_error, rank, select_cam_target
from test_explain import ingest_set, make_fundus_set, save_tiny_model, train_tiny_model

SIZE = 96


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    """A fundus set with lesion masks (half the images) and test_resnet trained on it to find the lesions."""
    from drray.models.model import save_model

    base = tmp_path_factory.mktemp("select")
    manifest = ingest_set(make_fundus_set(base / "data", 40, seed=7), base / "run")
    save_model(train_tiny_model(SIZE, "layer3"), base / "model")
    return {"base": base, "manifest": manifest, "model": base / "model"}


def _candidate(stride, method, hit, energy, area=0.01):
    return Candidate(stride=stride, layer=f"layer{stride}", method=method, images=20, hit_rate=hit,
                     energy_in_lesions=energy, lesion_area=area, chance_hit=0.1)


def test_rank_prefers_hit_rate_and_breaks_ties_within_one_standard_error_by_lift():
    # 20 images: the best rate 0.90 has a standard error of 0.076, so 0.85 ties with it and 0.80 does not.
    a = _candidate(8, "gradcam", 0.85, 0.05)
    b = _candidate(8, "xgradcam", 0.85, 0.08)  # in the band, with more energy on the lesions than a and c
    c = _candidate(16, "gradcam", 0.90, 0.01)
    d = _candidate(32, "gradcam", 0.80, 0.20)  # outside the band: lift cannot buy it in
    e = _candidate(32, "layercam", float("nan"), float("nan"))
    f = _candidate(16, "xgradcam", 0.85, 0.08)  # ties with b on both: b came first
    assert [x.method + str(x.stride) for x in rank([a, b, c, d, e, f])] == [
        "xgradcam8", "xgradcam16", "gradcam8", "gradcam16", "gradcam32", "layercam32"]
    # A perfect score is a finite sample too: 20 of 20 and 19 of 20 are not told apart (band 0.944), and
    # the map with more of its energy on the lesions wins; 17 of 20 stays outside.
    perfect = [_candidate(8, "gradcam", 1.0, 0.01), _candidate(16, "gradcam", 0.95, 0.5),
               _candidate(32, "gradcam", 0.85, 0.9)]
    assert [x.stride for x in rank(perfect)] == [16, 8, 32]


def test_hit_rate_standard_error_keeps_a_spread_at_the_ends():
    assert hit_rate_standard_error(1.0, 77) == pytest.approx(math.sqrt(79 / 81 * 2 / 81 / 81))
    assert hit_rate_standard_error(0.0, 77) == hit_rate_standard_error(1.0, 77) > 0.017
    assert hit_rate_standard_error(0.5, 100) == pytest.approx(0.05 * math.sqrt(100 / 104))
    assert hit_rate_standard_error(0.9, 1000) < hit_rate_standard_error(0.9, 100)


@pytest.mark.timeout(180)
def test_selection_writes_the_choice_into_the_card_and_every_path_uses_it(masked_run):
    from drray.inference import Predictor
    from drray.models.card import read_card

    before = json.loads((masked_run["model"] / "model.json").read_text())
    selection = select_cam_target(masked_run["manifest"], masked_run["model"], split=None,
                                  methods=["gradcam", "xgradcam"], cam=CamConfig(pointing_tolerance=0.05),
                                  job=ExplainConfig(batch_size=8))
    table = selection.table()
    assert len(table) == 5 * 2  # strides 8, 16, 32 and the fused pairs 8+16, 16+32, x two methods
    assert set(table["stride"]) == {8, 16, 32} and table["images"].eq(20).all()
    assert set(table["layer"]) == {"backbone.layer2", "backbone.layer3", "backbone.layer4.0",
                                   "backbone.layer2+backbone.layer3", "backbone.layer3+backbone.layer4.0"}
    assert selection.best.hit_rate >= table["hit_rate"].max() - (0.25 / 20) ** 0.5  # within one standard error
    # The trained model finds its lesions somewhere far above what a random peak would.
    assert selection.best.hit_rate > selection.best.chance_hit + 0.3
    card = read_card(masked_run["model"])
    assert card.cam_method == selection.method and card.cam_target_stride == selection.stride
    assert "+".join("backbone." + p for p in card.cam_target_layer.split("+")) == selection.layer
    assert len(card.cam_selection["candidates"]) == 10 and card.cam_selection["split"] == "all"
    after = json.loads((masked_run["model"] / "model.json").read_text())
    assert after["model_id"] == before["model_id"]  # the weights and their id are untouched
    predictor = Predictor.from_model_dir(masked_run["model"])
    assert predictor.methods == [selection.method] and predictor.target_layer == selection.layer
    assert Predictor.from_model_dir(masked_run["model"], methods=["layercam"]).methods == ["layercam"]


@pytest.mark.timeout(120)
def test_selection_refuses_what_it_cannot_measure(masked_run, tmp_path):
    import pandas as pd

    from drray.schema import MASK_COLUMNS

    cam = CamConfig()
    with pytest.raises(ValueError, match="fast CAM methods only; scorecam"):
        select_cam_target(masked_run["manifest"], masked_run["model"], split=None, methods=["scorecam"], cam=cam)
    with pytest.raises(ValueError, match=r"among \(8, 16, 32\), got \[4\]"):
        select_cam_target(masked_run["manifest"], masked_run["model"], split=None, strides=[4], methods=["gradcam"],
                          cam=cam, write=False)
    with pytest.raises(ValueError, match="unknown CAM method"):
        select_cam_target(masked_run["manifest"], masked_run["model"], split=None, methods=["gradcamm"], cam=cam)
    no_masks = pd.read_parquet(masked_run["manifest"]).assign(**{c: None for c in MASK_COLUMNS})
    with pytest.raises(NotEnoughMasks, match="0 readable images with lesion masks; choosing a CAM layer needs"):
        select_cam_target(no_masks, masked_run["model"], split=None, cam=cam)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        select_cam_target(masked_run["manifest"], tmp_path / "nowhere", split=None, cam=cam)
    card_before = (masked_run["model"] / "model.json").read_text()
    select_cam_target(masked_run["manifest"], masked_run["model"], split=None, methods=["gradcam"], cam=cam,
                      write=False)
    assert (masked_run["model"] / "model.json").read_text() == card_before


@pytest.mark.timeout(180)
def test_explain_select_layer_from_the_cli(masked_run, tmp_path):
    """`drray explain --select-layer`: the choice is printed, written to the card and used for the table."""
    import shutil
    import subprocess
    import sys

    import pyarrow.dataset as pads

    model = tmp_path / "model"
    shutil.copytree(masked_run["model"], model)
    save_tiny_model(tmp_path / "unused")  # the command must read the model it is given, not another
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "drray", "explain", "--manifest", str(masked_run["manifest"]), "--model", str(model),
         "--out", str(out), "--select-layer", "explain.select_split=train", "explain.select_methods=[gradcam,hirescam]",
         "explain.batch_size=8", "explain.sanity_images=0", "explain.num_actors=1", "explain.cpus_per_actor=0.5"],
        capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((model / "model.json").read_text())
    assert card["cam_method"] in ("gradcam", "hirescam") and card["cam_selection"]["split"] == "train"
    layer = "+".join("backbone." + p for p in card["cam_target_layer"].split("+"))
    assert f"CAM layer: {card['cam_method']} at " in proc.stdout and layer in proc.stdout
    t = pads.dataset(out / "explanations", format="parquet", partitioning="hive").to_table(
        columns=["cam_method", "cam_layer"]).to_pandas()
    assert set(t["cam_method"]) == {card["cam_method"]}
    assert set(t["cam_layer"]) == {layer}
