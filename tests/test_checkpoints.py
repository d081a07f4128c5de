"""Foundation-model checkpoints in their published layouts load completely and safely (drray.models.checkpoints).

Stand-ins are timm's tiny ViTs saved in RETFound's MAE layout and DINOv2's teacher layout (same wrappers,
prefixes, extra keys and names, smaller widths), at another input size than the model's, so the position
embedding must be resampled.
"""

from __future__ import annotations

import argparse
import hashlib

import pytest
import torch

from drray.models.checkpoints import normalise_keys
from drray.models.model import create_model

SIZE = 64  # the model's input: a 4 x 4 grid of 16-px patches; the sources are at timm's native 160 px (10 x 10)


def _source(name: str, **kw) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(7)
    return {k: v.clone() for k, v in timm.create_model(name, **kw).state_dict().items()}


def _resampled_pos(pos: torch.Tensor, prefix: int, grid: int = SIZE // 16) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    return torch.cat([pos[:, :prefix], resample_abs_pos_embed(pos[:, prefix:], [grid, grid], num_prefix_tokens=0)], 1)


def _mae_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """RETFound MAE's layout: encoder + decoder under 'model', and the training state beside it."""
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_embed.weight": torch.randn(32, 64),
               "decoder_pos_embed": torch.randn(1, 101, 32), "decoder_blocks.0.norm1.weight": torch.ones(32),
               "decoder_norm.weight": torch.ones(32), "decoder_pred.weight": torch.randn(768, 32)}
    return {"model": {**encoder, **decoder}, "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4}]},
            "epoch": 799, "scaler": {"scale": 65536.0, "growth_factor": 2.0},
            "args": argparse.Namespace(model="mae_vit_large_patch16", input_size=224, mask_ratio=0.75, norm_pix_loss=True)}


def test_a_retfound_mae_checkpoint_loads_every_encoder_tensor(tmp_path):
    src = _source("test_vit")
    path = tmp_path / "RETFound_mae_stand_in.pth"
    torch.save(_mae_checkpoint(src), path)
    model = create_model("test_vit", image_size=SIZE, pretrained_path=path)
    got = model.backbone.state_dict()
    for k, v in src.items():
        if k.startswith("head."):
            continue  # 1000 ImageNet classes: the 5-grade head stays fresh
        want = _resampled_pos(v, 1) if k == "pos_embed" else v
        torch.testing.assert_close(got[k], want, rtol=0, atol=0, msg=k)
    prov = model.card.pretrained
    assert prov["layout"].startswith("mae") and prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["resampled"] == ["pos_embed (1, 101, 64) -> (1, 17, 64)"]
    assert sorted(prov["dropped"]["MAE decoder"]) == sorted(
        ["decoder_embed.weight", "decoder_pos_embed", "decoder_blocks.0.norm1.weight", "decoder_norm.weight",
         "decoder_pred.weight"])
    assert prov["dropped"]["MAE / iBOT mask token"] == ["mask_token"]
    assert prov["fresh"] == ["head.weight", "head.bias"]
    assert prov["loaded"] == len(src) - 2


def test_a_dinov2_teacher_checkpoint_with_registers_and_chunked_blocks_loads(tmp_path):
    src = {k: v for k, v in _source("test_vit2").items() if not k.startswith("head.")}  # a teacher has no classifier
    teacher = {}
    for k, v in src.items():
        k = k.replace("reg_token", "register_tokens")
        k = k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k  # one chunk, as block_chunks=1
        teacher[f"backbone.{k}"] = v
    teacher.update({"dino_head.mlp.0.weight": torch.randn(16, 64), "dino_head.last_layer.weight_g": torch.ones(8, 1),
                    "ibot_head.mlp.0.weight": torch.randn(16, 64)})
    path = tmp_path / "RETFound_dinov2_stand_in.pth"
    torch.save({"teacher": teacher, "iteration": 12500}, path)
    model = create_model("test_vit2", image_size=SIZE, pretrained_path=path)
    got = model.backbone.state_dict()
    for k, v in src.items():
        want = _resampled_pos(v, 1) if k == "pos_embed" else v
        torch.testing.assert_close(got[k], want, rtol=0, atol=0, msg=k)
    prov = model.card.pretrained
    assert prov["layout"] == "dinov2 (teacher)"
    assert sorted(prov["dropped"]["DINO / iBOT head"]) == sorted(
        ["dino_head.mlp.0.weight", "dino_head.last_layer.weight_g", "ibot_head.mlp.0.weight"])
    assert prov["fresh"] == ["head.weight", "head.bias"]


def test_dinov2_swiglu_and_chunk_names_map_to_timms():
    target = ["blocks.5.mlp.fc1.weight", "blocks.5.mlp.fc2.weight", "reg_token", "cls_token"]
    state = {"backbone.blocks.1.5.mlp.w12.weight": 1, "backbone.blocks.1.5.mlp.w3.weight": 2,
             "backbone.register_tokens": 3, "backbone.cls_token": 4}
    assert normalise_keys(state, target) == {"blocks.5.mlp.fc1.weight": 1, "blocks.5.mlp.fc2.weight": 2,
                                             "reg_token": 3, "cls_token": 4}


def test_a_patch_embedding_of_another_patch_size_is_resampled(tmp_path):
    from timm.layers import resample_patch_embed

    src = _source("test_vit", patch_size=8)  # 20 x 20 patches of 8 px at 160
    torch.save({"model": src}, tmp_path / "p8.pth")
    model = create_model("test_vit", image_size=SIZE, pretrained_path=tmp_path / "p8.pth")
    got = model.backbone.state_dict()
    torch.testing.assert_close(got["patch_embed.proj.weight"],
                               resample_patch_embed(src["patch_embed.proj.weight"], [16, 16]), rtol=0, atol=0)
    torch.testing.assert_close(got["pos_embed"], _resampled_pos(src["pos_embed"], 1), rtol=0, atol=0)
    assert len(model.card.pretrained["resampled"]) == 2


def test_a_backbone_tensor_left_fresh_is_an_error_unless_allowed(tmp_path):
    src = _source("test_vit")
    del src["blocks.1.attn.qkv.weight"]
    path = tmp_path / "partial.pth"
    torch.save({"model": src}, path)
    with pytest.raises(ValueError, match=r"leaves 1 backbone tensors at their fresh initialisation: "
                                         r"blocks\.1\.attn\.qkv\.weight.*model\.allow_missing=true"):
        create_model("test_vit", image_size=SIZE, pretrained_path=path)
    model = create_model("test_vit", image_size=SIZE, pretrained_path=path, allow_missing=True)
    assert "blocks.1.attn.qkv.weight" in model.card.pretrained["fresh"]


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_hostile_pickle_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    torch.save({"model": {"pos_embed": torch.zeros(1)}, "payload": _Hostile(marker)}, path)
    with pytest.raises(ValueError, match=r"never pickled code"):
        create_model("test_vit", image_size=SIZE, pretrained_path=path)
    assert not marker.exists()


# ------------------------------------------------------------------------------ recipes and how they train
RECIPES = ["retfound_aptos2019", "retfound_dinov2_aptos2019", "retfound_green_aptos2019", "visionfm_aptos2019",
           "flair_aptos2019", "dinov2_vitb14_aptos2019"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_foundation_recipe_is_a_valid_config_of_a_real_backbone(recipe):
    from pathlib import Path

    import timm

    from drray.config import Config

    cfg = Config.from_yaml(Path(__file__).parents[1] / "configs" / f"{recipe}.yaml")
    assert cfg.model.backbone in timm.list_models() and cfg.model.pretrained_path and not cfg.model.pretrained
    assert len(cfg.model.mean) == 3 and len(cfg.model.std) == 3
    assert cfg.data.preprocess.image_size in (224, 392, 512)


def test_layer_decay_scales_each_block_and_the_linear_probe_trains_the_head_alone():
    from types import SimpleNamespace

    from drray.training.optim import make_optimizer

    model = create_model("test_vit", image_size=SIZE)
    t = SimpleNamespace(lr=1e-3, weight_decay=0.05, layer_decay=0.5, linear_probe=False)
    opt = make_optimizer(model, t)
    scales = sorted({g["lr_scale"] for g in opt.param_groups})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** (len(model.backbone.blocks) + 1))
    probe = make_optimizer(model, SimpleNamespace(lr=1e-3, weight_decay=0.0, layer_decay=None, linear_probe=True))
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"] and sum(len(g["params"]) for g in probe.param_groups) == 2
    with pytest.raises(ValueError, match="no group_matcher"):
        make_optimizer(_no_matcher(), t)


def _no_matcher():
    from types import SimpleNamespace

    return SimpleNamespace(backbone=torch.nn.Linear(2, 2), card=SimpleNamespace(timm_name="plain"))


def test_recipe_options_are_checked():
    from drray.config import Config

    with pytest.raises(ValueError, match=r"train.layer_decay must be in \(0, 1\]"):
        Config.from_dict({"train": {"layer_decay": 1.5}})
    with pytest.raises(ValueError, match="linear_probe trains the classifier alone"):
        Config.from_dict({"train": {"layer_decay": 0.65, "linear_probe": True}})
    with pytest.raises(ValueError, match="model.mean must be three numbers"):
        Config.from_dict({"model": {"mean": [0.5]}})
    m = create_model("test_vit2", image_size=SIZE, global_pool="avg", mean=[0.5] * 3, std=[0.5] * 3)
    assert m.card.mean == [0.5] * 3 and m.card.timm_kwargs["global_pool"] == "avg"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_foundation_recipe_trains_from_a_stand_in_checkpoint_and_is_explained(
        ray_session, tmp_path):
    """RETFound's recipe with a tiny stand-in (test_vit2: registers, average pooling) in the MAE layout: one tiny
    epoch with layer-wise decay; the exported model explains a photograph and its card names the checkpoint."""
    from pathlib import Path

    import skimage.data

    from drray.config import Config
    from drray.inference import explain_image
    from drray.models.model import load_model
    from drray.training.train import train
    from test_train import make_tiny_set

    ckpt = tmp_path / "stand_in.pth"
    torch.save(_mae_checkpoint(_source("test_vit2")), ckpt)
    manifest = make_tiny_set(tmp_path / "data")
    cfg = Config.from_yaml(Path(__file__).parents[1] / "configs" / "retfound_aptos2019.yaml", [
        "model.backbone=test_vit2", f"model.pretrained_path={ckpt}", f"data.manifest={manifest}",
        f"data.preprocess.image_size={SIZE}", "train.epochs=1", "train.batch_size=8", "train.use_gpu=false",
        "train.cpus_per_worker=1", "train.warmup_epochs=0", "train.early_stopping_patience=0", "data.decode_cpus=0.5"])
    result = train(cfg, tmp_path / "run", manifest)
    model = load_model(result.model_dir)
    assert model.card.pretrained["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert model.card.pretrained["layout"].startswith("mae") and model.card.mean == [0.485, 0.456, 0.406]
    out = explain_image(skimage.data.retina(), result.model_dir, method="gradcam")
    assert out["cam"].shape == (SIZE, SIZE) and out["target_layer"].startswith("backbone.blocks.")
