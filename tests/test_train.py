"""Training: pure pieces (class weights, schedule, augmentation, optimiser state), and one real
Ray Train run with an ordinal head on a tiny synthetic set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from drray.models.model import to_unit
from drray.training.augment import AugmentConfig, augment
from drray.config import Config, SynthConfig
from drray.training.train import check_train_config, class_weights, trial_config
from drray.training.loop import load_optimizer, lr_factor, save_optimizer

NO_CHANGE = AugmentConfig(hflip=0, vflip=0, rotate_deg=0, scale=(1, 1), translate=0,
                          brightness=0, contrast=0, saturation=0, background_level=-1)


def make_tiny_set(root: Path, n: int = 48, size: int = 64) -> str:
    """A synthetic photograph set + manifest under `root`; returns the manifest path."""
    from drray.data.ingest import ingest
    from drray.data.synth import generate

    generate(SynthConfig(n=n, size=size, seed=3), root / "synth", parallel=False)
    result = ingest("synth", root / "synth", root, seed=0, split_fractions=(0.5, 0.25, 0.25))
    return str(result.manifest_path)


def tiny_overrides(tmp: Path, *overrides: str) -> list[str]:
    """CPU-sized training: 64 px, small batches, two epochs; Ray's runs stay under each command's --out."""
    return [
        "model.backbone=test_resnet", "data.preprocess.image_size=64", "train.batch_size=8",
        "train.epochs=2", "train.cpus_per_worker=1", "data.decode_cpus=0.5", *overrides,
    ]


def tiny_config(tmp: Path, *overrides: str) -> Config:
    return Config.from_yaml(None, tiny_overrides(tmp, *overrides))


# ------------------------------------------------------------------------------------- pure parts
def test_class_weights_are_inverse_frequency_with_mean_one_per_image():
    labels = np.array([0] * 6 + [2] * 3 + [4] * 1)
    w = class_weights(labels)
    assert w[1] == 0 and w[3] == 0  # absent grades never contribute
    assert w[0] < w[2] < w[4]
    assert np.isclose(np.mean([w[y] for y in labels]), 1.0)
    assert np.isclose(w[0] * 6, w[4] * 1)
    assert class_weights(labels, "none") is None
    with pytest.raises(ValueError, match="balance"):
        class_weights(labels, "oversample")


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, warmup_steps=4, total_steps=20) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert math.isclose(lr_factor(20, 4, 20), 0.01)
    assert lr_factor(0, 0, 10) == 1.0


def test_augment_identity_and_flips_are_exact():
    g = torch.Generator().manual_seed(0)
    x = to_unit(torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8, generator=g)).contiguous()
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert torch.allclose(augment(x, NO_CHANGE), x, atol=1e-5)
    hflip = AugmentConfig(**{**NO_CHANGE.__dict__, "hflip": 1.0})
    vflip = AugmentConfig(**{**NO_CHANGE.__dict__, "vflip": 1.0})
    assert torch.allclose(augment(x, hflip), x.flip(-1), atol=1e-5)
    assert torch.allclose(augment(x, vflip), x.flip(-2), atol=1e-5)


def test_train_step_is_the_models_normalisation_the_heads_loss_and_one_optimiser_step():
    """`train_step` (the Ray Train loop's and the validity benchmark's) on a batch of prepared uint8 images."""
    import copy

    from drray.models.model import create_model
    from drray.training.loop import _loss, train_step

    torch.manual_seed(0)
    model = create_model("test_resnet", head="ordinal", image_size=32)
    before = copy.deepcopy(model)
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 4])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    loss = train_step(model, optimizer, images, labels, lr=0.1, augment=False)
    before.train()
    expected = _loss(before(before.normalize(images).contiguous()), labels, "ordinal", None)
    assert float(loss) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert optimizer.param_groups[0]["lr"] == 0.1  # the step's own learning rate, not the optimiser's
    moved = [not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters())]
    assert any(moved) and not loss.requires_grad
    # With augmentation the generator decides the batch: the same seed, the same step.
    twins = [copy.deepcopy(before) for _ in range(2)]
    losses = [float(train_step(m, torch.optim.SGD(m.parameters(), lr=0.1), images, labels, lr=0.1,
                               generator=torch.Generator().manual_seed(7))) for m in twins]
    assert losses[0] == losses[1] and losses[0] != pytest.approx(float(expected.detach()), rel=1e-6)


def test_augment_keeps_the_black_rim_black_and_values_in_range():
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2).float()
    x = disc.expand(8, 3, 64, 64) * torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)
    out = augment(x, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    corners = out[:, :, :6, :6]
    assert float(corners.max()) == 0.0
    assert not torch.allclose(out, x)  # something changed
    same = augment(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, same)  # seeded: reproducible


def test_augment_rejects_a_channels_last_batch():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        augment(torch.zeros(2, 16, 16, 3))


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1)
    for _ in range(3):
        net(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    save_optimizer(opt, tmp_path / "opt.safetensors")
    fresh = torch.optim.AdamW(net.parameters(), lr=1.0)
    load_optimizer(fresh, tmp_path / "opt.safetensors", "cpu")
    a, b = opt.state_dict(), fresh.state_dict()
    assert b["param_groups"][0]["lr"] == 0.01 and b["param_groups"][0]["weight_decay"] == 0.1
    for idx, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][idx][key])), key
    assert not (tmp_path / "opt.safetensors").read_bytes().startswith(b"PK")  # not a torch.save zip


def test_trial_config_applies_search_parameters_without_touching_the_base(tmp_path):
    base = tiny_config(tmp_path)
    cfg = trial_config(base, backbone="test_efficientnet", head="ordinal", lr=0.01, image_size=96, batch_size=4)
    assert (cfg.model.backbone, cfg.model.head, cfg.train.lr) == ("test_efficientnet", "ordinal", 0.01)
    assert (cfg.data.preprocess.image_size, cfg.train.batch_size) == (96, 4)
    assert (base.model.backbone, base.data.preprocess.image_size) == ("test_resnet", 64)


@pytest.mark.parametrize("override, message", [
    ("model.backbone=resnet_nonexistent", "unknown timm model"),
    ("train.cpus_per_worker=0", "cpus_per_worker"),
    ("train.max_failures=-2", "max_failures"),
    ("train.limit_train_batches=0", "limit_train_batches"),
    ("train.label_smoothing=1.5", "label_smoothing"),
])
def test_bad_training_configs_are_refused_before_anything_starts(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        check_train_config(tiny_config(tmp_path, override))


def test_gpu_training_without_gpus_per_worker_is_refused(tmp_path):
    with pytest.raises(ValueError, match="gpus_per_worker"):
        check_train_config(tiny_config(tmp_path, "train.use_gpu=true", "train.gpus_per_worker=0"))


# ------------------------------------------------------------------------------------- Ray Train
@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> str:
    return make_tiny_set(tmp_path_factory.mktemp("tiny_train"))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_train_ordinal_head_stores_thresholds_fitted_on_validation(ray_session, tiny_manifest, tmp_path):
    from drray.data.dataset import build_dataset
    from drray.models.model import fit_ordinal_thresholds, load_model
    from drray.explain.grade import grade_split
    from drray.training.train import train

    cfg = tiny_config(tmp_path, "model.head=ordinal", "train.epochs=2", "train.early_stopping_patience=0")
    result = train(cfg, tmp_path / "run", manifest=tiny_manifest)
    # Everything the run wrote, Ray's checkpoints included, is under its --out.
    assert (tmp_path / "run" / "ray_results").is_dir() and Path(result.run_path).is_relative_to(tmp_path / "run")
    assert result.metrics["score_method"].startswith("val QWK with ordinal thresholds")

    saved = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [1, 2]
    assert result.metrics["epoch"] in (1, 2) and result.metrics["qwk"] is not None
    assert sorted(p.name for p in Path(result.model_dir).iterdir()) == ["model.json", "weights.safetensors"]

    model = load_model(result.model_dir)
    card = model.card
    assert card.head == "ordinal" and len(card.thresholds) == 4
    # The thresholds are the ones fit_ordinal_thresholds gives on this model's validation scores.
    val = build_dataset(tiny_manifest, card.preprocess_config(), split="val", labelled_only=True)
    batch = val.take_batch(10_000, batch_format="numpy")
    with torch.no_grad():
        scores = model(model.normalize(torch.from_numpy(batch["image"].copy())))[:, 0].numpy()
    refit = fit_ordinal_thresholds(scores, batch["label"].astype(np.int64))
    np.testing.assert_allclose(card.thresholds, refit, atol=1e-3)

    test_metrics = grade_split(result.model_dir, tiny_manifest, split="test")
    assert test_metrics["split"] == "test" and test_metrics["n"] > 0
    assert -1.0 <= test_metrics["qwk"] <= 1.0 and test_metrics["model_id"] == card.model_id


def test_epoch_seeds_differ_by_seed_epoch_and_rank_and_repeat():
    from drray.training.loop import epoch_seed

    seeds = {epoch_seed(s, e, r) for s in (0, 1) for e in range(20) for r in range(4)}
    assert len(seeds) == 2 * 20 * 4 and all(0 <= x < 2 ** 32 for x in seeds)
    assert epoch_seed(0, 3, 1) == epoch_seed(0, 3, 1)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_config_trains_one_model(ray_session, tiny_manifest, tmp_path):
    """Same config and seed, same weights to the byte: batch order and augmentation follow the seed."""
    from drray.training.train import train

    cfg = tiny_config(tmp_path, "train.epochs=2", "train.early_stopping_patience=0")
    weights = [(Path(train(cfg, tmp_path / f"run{k}", manifest=tiny_manifest).model_dir) / "weights.safetensors")
               .read_bytes() for k in range(2)]
    assert weights[0] == weights[1]


def test_hub_and_local_dir_backbone_names_pass_the_config_check(tmp_path):
    """Every name timm.create_model accepts is a valid model.backbone, not only registered ones."""
    for name in ("hf-hub:timm/resnet18.a1_in1k", "local-dir:/models/my-resnet"):
        check_train_config(tiny_config(tmp_path, f"model.backbone={name}"))


def test_export_model_takes_the_checkpoint_with_its_filesystem(tmp_path):
    """Remote checkpoints have scheme-less paths that only their filesystem resolves (as s3:// ones do)."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from drray.models.model import create_model, load_model, save_model
    from drray.training.train import export_model

    bucket = tmp_path / "bucket"
    save_model(create_model("test_resnet", image_size=32), bucket / "run" / "checkpoint_000001")
    remote = pafs.SubTreeFileSystem(str(bucket), pafs.LocalFileSystem())
    ckpt = Checkpoint("run/checkpoint_000001", filesystem=remote)
    out = export_model(ckpt, tmp_path / "model")
    assert load_model(out).card.timm_name == "test_resnet"
    with pytest.raises(Exception):
        export_model(ckpt.path, tmp_path / "other")  # the bare path alone names nothing on local disk
