from pathlib import Path

import pytest

from drray.config import Config, apply_override
from drray.recipes import recipe_path


def test_defaults_build():
    cfg = Config()
    assert cfg.data.preprocess.image_size == 224
    assert cfg.model.head == "classification"


def test_yaml_and_overrides(tmp_path: Path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  epochs: 4\ndata:\n  preprocess:\n    image_size: 128\n")
    cfg = Config.from_yaml(p, ["train.lr=0.01", "tune.backbones=[a,b]", "data.preprocess.ben_graham=true"])
    assert cfg.train.epochs == 4 and cfg.train.lr == 0.01
    assert cfg.tune.backbones == ["a", "b"]
    assert cfg.data.preprocess.image_size == 128 and cfg.data.preprocess.ben_graham is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.nope=1", "unknown config key"),
        ("model.head=softmax", "model.head must be"),
        ("synth.class_balance=[1,2]", "needs 5 shares"),
        ("data.split_fractions=[0.5,0.5,0.5]", "summing to 1"),
        ("epochs=3", "must name a section and a field"),
        ("train.epochs", "not of the form"),
    ],
)
def test_bad_values_are_clear(override, message):
    with pytest.raises(ValueError, match=message):
        Config.from_yaml(None, [override])


@pytest.mark.parametrize("key", ["num_actors", "batch_size", "sanity_images", "select_layer", "gpus_per_actor"])
def test_a_job_key_under_cam_names_its_new_place(key):
    """How the batch job runs moved from `cam:` to `explain:`; an older recipe is told where each key went."""
    with pytest.raises(ValueError, match=rf"cam\.{key} is now explain\.{key}"):
        Config.from_yaml(None, [f"cam.{key}=1"])
    assert getattr(Config.from_yaml(None, [f"explain.{key}=1"]).explain, key) == 1


@pytest.mark.parametrize("override, message", [
    ("explain.num_actors=0", "explain.num_actors must be >= 1"),
    ("explain.select_methods=[]", "explain.select_methods is empty"),
    ("explain.sanity_draws=0", "explain.sanity_draws must be >= 1"),
    ("cam.target_stride=4", "cam.target_stride must be 8, 16, 32"),
    ("cam.overlay_size=2", "cam.overlay_size must be >= 8"),
])
def test_explain_and_cam_sections_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        Config.from_yaml(None, [override])


def test_missing_file_is_clear(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Config.from_yaml(tmp_path / "nope.yaml")


def test_non_mapping_yaml(tmp_path: Path):
    p = tmp_path / "r.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping of sections"):
        Config.from_yaml(p)


def test_apply_override_nested():
    raw = {}
    apply_override(raw, "data.preprocess.image_size=96")
    assert raw == {"data": {"preprocess": {"image_size": 96}}}


def test_packaged_demo_recipe_loads():
    cfg = Config.from_yaml(recipe_path("synth_demo"))
    assert cfg.synth.n >= 1000  # the test split must hold at least 200 images
    assert (Path(__file__).parents[1] / "configs/synth_demo.yaml").resolve() == recipe_path("synth_demo").resolve()


def test_round_trip_json():
    cfg = Config.from_yaml(None, ["train.epochs=2"])
    import json

    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
