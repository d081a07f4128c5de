"""drray.models.model over timm's tiny test_* models of several families: heads, model dirs, weights, preprocessing."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import safetensors.torch
import torch

from drray.config import PreprocessConfig
from drray.scores.grading import quadratic_weighted_kappa
from drray.models.card import CARD_FILE, WEIGHTS_FILE, ModelCard
from drray.models.model import (
    DRModel,
    create_model,
    fit_ordinal_temperature,
    fit_ordinal_thresholds,
    list_backbones,
    load_model,
    save_model,
)
from drray.models.ordinal import DEFAULT_THRESHOLDS, grades_from_scores
from drray.data.preprocess import prepare

# One per family: plain CNN, mobile CNN, ConvNeXt, normaliser-free, BYOB, ViT, windowed attention.
FAMILIES = ["test_resnet", "test_efficientnet", "test_convnext", "test_nfnet", "test_byobnet",
            "test_vit", "test_maxvit"]
HEADS = ["classification", "ordinal"]
SIZE = 64


def _batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _fundus(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """A bright orange disc with texture on black, like a fundus photograph."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.45 * h) ** 2
    img = np.zeros((h, w, 3), np.float64)
    img[disc] = (200, 90, 40)
    img += rng.normal(0, 12, img.shape) * disc[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("head", HEADS)
def test_heads_give_outputs_probs_and_grades(name, head):
    model = create_model(name, head=head, image_size=SIZE)
    assert isinstance(model, DRModel) and model.head == head
    out = model(_batch())
    assert out.shape == (2, 5 if head == "classification" else 1)
    probs = model.grade_probs(out)
    assert probs.shape == (2, 5)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2))
    assert (probs >= 0).all()
    pred = model.predict(out)
    assert pred.dtype == torch.long and pred.shape == (2,) and ((pred >= 0) & (pred <= 4)).all()
    # Differentiable end to end: CAM methods back-propagate from these probabilities.
    probs[:, 2:].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    with pytest.raises(ValueError, match="outputs"):
        model.grade_probs(torch.zeros(2, 3))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("head", HEADS)
def test_save_load_roundtrip_is_exact(tmp_path, name, head):
    model = create_model(name, head=head, image_size=SIZE, drop_rate=0.1).eval()
    if head == "ordinal":
        model.set_ordinal_calibration([0.2, 1.1, 2.7, 3.3], temperature=0.3)
    x = _batch()
    with torch.no_grad():
        expected = model(x)
    out = save_model(model, tmp_path / "model", metrics={"val_qwk": np.float32(0.5), "val_auc": float("nan")})
    assert sorted(p.name for p in out.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    loaded = load_model(out)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert loaded.card == model.card
    card = json.loads((out / CARD_FILE).read_text())
    assert card["timm_name"] == name and card["head"] == head and card["input_size"] == SIZE
    assert card["metrics"] == {"val_qwk": 0.5, "val_auc": None}
    assert card["model_id"].startswith(f"{name}-{head}-") and card["created"]
    if head == "ordinal":
        assert card["thresholds"] == [0.2, 1.1, 2.7, 3.3] and card["temperature"] == 0.3
    # The weights file is safetensors: an 8-byte header length then a JSON header, no pickle opcodes.
    raw = (out / WEIGHTS_FILE).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + header_len])


def test_model_id_follows_weights_and_thresholds(tmp_path):
    torch.manual_seed(0)
    a = create_model("test_resnet", head="ordinal", image_size=SIZE)
    torch.manual_seed(0)
    b = create_model("test_resnet", head="ordinal", image_size=SIZE)
    torch.manual_seed(1)
    c = create_model("test_resnet", head="ordinal", image_size=SIZE)
    assert a.card.model_id == b.card.model_id != c.card.model_id
    save_model(b, tmp_path / "b")
    assert b.card.model_id == a.card.model_id
    b.set_ordinal_calibration([0.4, 1.5, 2.5, 3.5])
    save_model(b, tmp_path / "b")
    assert b.card.model_id != a.card.model_id
    assert load_model(tmp_path / "b").card.model_id == b.card.model_id


def test_pickled_weights_are_refused_without_unpickling(tmp_path, monkeypatch):
    model = create_model("test_resnet", image_size=SIZE)
    d = save_model(model, tmp_path / "model")
    torch.save(model.backbone.state_dict(), d / WEIGHTS_FILE)  # a .pth renamed

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load_model must never unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr("pickle.load", no_unpickling)
    monkeypatch.setattr("pickle.loads", no_unpickling)
    with pytest.raises(ValueError, match="never unpickles"):
        load_model(d)


def test_load_model_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        load_model(tmp_path / "file")
    d = save_model(create_model("test_resnet", image_size=SIZE), tmp_path / "model")
    weights = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_model(d)
    (d / WEIGHTS_FILE).write_bytes(weights)
    card = json.loads((d / CARD_FILE).read_text())

    def load_with(**changes):
        (d / CARD_FILE).write_text(json.dumps({**card, **changes}))
        return load_model(d)

    with pytest.raises(ValueError, match="does not fit 'test_efficientnet'"):
        load_with(timm_name="test_efficientnet")
    with pytest.raises(ValueError, match="missing keys"):
        load_with(head="ordinal", num_outputs=1)
    with pytest.raises(ValueError, match="unknown timm model 'test_resnt'.*test_resnet"):
        load_with(timm_name="test_resnt")
    with pytest.raises(ValueError, match="head must be one of"):
        load_with(head="regression")
    with pytest.raises(ValueError, match="format_version"):
        load_with(format_version=99)
    with pytest.raises(ValueError, match="lacks required key"):
        (d / CARD_FILE).write_text(json.dumps({k: v for k, v in card.items() if k != "mean"}))
        load_model(d)
    (d / CARD_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(d)
    (d / CARD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=CARD_FILE):
        load_model(d)


def test_unknown_card_keys_are_ignored_with_a_warning(tmp_path, caplog):
    d = save_model(create_model("test_resnet", image_size=SIZE), tmp_path / "model")
    card = json.loads((d / CARD_FILE).read_text())
    (d / CARD_FILE).write_text(json.dumps({**card, "from_the_future": 1}))
    with caplog.at_level(logging.WARNING, logger="drray.models.card"):
        assert load_model(d).card.timm_name == "test_resnet"
    assert "from_the_future" in caplog.text


def _foreign_checkpoint(seed: int) -> dict[str, torch.Tensor]:
    """An ImageNet-style (1000-class) test_resnet state dict, as DDP saves it."""
    import timm

    torch.manual_seed(seed)
    src = timm.create_model("test_resnet", num_classes=1000)
    return {f"module.{k}": v for k, v in src.state_dict().items()}


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth_nested"])
def test_pretrained_path_loads_backbone_and_skips_the_classifier(tmp_path, caplog, fmt):
    state = _foreign_checkpoint(seed=1)
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pth")
    if fmt == "safetensors":
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save({"epoch": 3, "state_dict": state} if fmt == "pth_nested" else state, path)
    torch.manual_seed(0)
    fresh = create_model("test_resnet", image_size=SIZE).eval()
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="drray.models.checkpoints"):
        loaded = create_model("test_resnet", image_size=SIZE, pretrained_path=path).eval()
    assert "loaded" in caplog.text
    import hashlib

    prov = loaded.card.pretrained
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["layout"] == {"safetensors": "safetensors", "pth": "state_dict", "pth_nested": "state_dict"}[fmt]
    assert sorted(prov["dropped"]["classifier of another shape"]) == ["fc.bias", "fc.weight"]
    assert prov["fresh"] == ["fc.weight", "fc.bias"] and prov["loaded"] == len(state) - 2
    got = loaded.backbone.state_dict()
    torch.testing.assert_close(got["conv1.0.weight"], state["module.conv1.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(got["fc.weight"], fresh.backbone.state_dict()["fc.weight"], rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.allclose(loaded(_batch()), fresh(_batch()))


def test_pretrained_path_errors(tmp_path):
    import timm

    vit = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(timm.create_model("test_vit").state_dict(), str(vit))
    with pytest.raises(ValueError, match="no tensor of .* matches"):
        create_model("test_resnet", pretrained_path=vit)
    with pytest.raises(FileNotFoundError):
        create_model("test_resnet", pretrained_path=tmp_path / "missing.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown file type"):
        create_model("test_resnet", pretrained_path=tmp_path / "w.npz")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "opt.pth")
    with pytest.raises(ValueError, match="holds no state dict"):
        create_model("test_resnet", pretrained_path=tmp_path / "opt.pth")
    with pytest.raises(ValueError, match="not both"):
        create_model("test_resnet", pretrained=True, pretrained_path=vit)


def test_unknown_names_get_close_matches():
    with pytest.raises(ValueError, match=r"unknown timm model 'test_resnett'.*close matches: .*test_resnet"):
        create_model("test_resnett")
    with pytest.raises(ValueError, match="head must be one of"):
        create_model("test_resnet", head="regression")
    with pytest.raises(ValueError, match="'layer9' is not a module.*layer4"):
        create_model("test_resnet", cam_target_layer="layer9")
    assert create_model("test_resnet", image_size=SIZE, cam_target_layer="layer4").card.cam_target_layer == "layer4"
    assert "test_resnet" in list_backbones("test_*")


def test_input_size_and_preprocess_options():
    native = create_model("test_vit")
    assert native.card.input_size == 160 and native.card.timm_kwargs == {}
    vit = create_model("test_vit", image_size=SIZE)
    assert vit.card.timm_kwargs == {"img_size": SIZE}
    assert vit(_batch()).shape == (2, 5)
    cnn = create_model("test_resnet", image_size=SIZE, preprocess=PreprocessConfig(image_size=224, ben_graham=True))
    assert cnn.card.input_size == SIZE and "img_size" not in cnn.card.timm_kwargs
    assert cnn.card.preprocess["image_size"] == SIZE and cnn.card.preprocess["ben_graham"] is True
    assert create_model("test_resnet", preprocess=PreprocessConfig(image_size=96)).card.input_size == 96
    assert cnn.card.mean == pytest.approx([0.5, 0.5, 0.5])
    assert create_model("test_efficientnet").card.mean == pytest.approx([0.485, 0.456, 0.406])


def test_preprocess_and_normalize_agree():
    model = create_model("test_efficientnet", image_size=SIZE)
    photo = _fundus()
    x = model.preprocess(photo)
    assert x.shape == (3, SIZE, SIZE) and x.dtype == torch.float32
    mean, std = torch.tensor(model.card.mean).view(3, 1, 1), torch.tensor(model.card.std).view(3, 1, 1)
    assert (x >= -mean / std - 1e-5).all() and (x <= (1 - mean) / std + 1e-5).all()
    prepared = prepare(photo, model.card.preprocess_config()).image
    hwc = torch.from_numpy(prepared).unsqueeze(0)
    torch.testing.assert_close(model.normalize(hwc)[0], x)
    torch.testing.assert_close(model.normalize(hwc.permute(0, 3, 1, 2).contiguous())[0], x)
    # The black surround is 0 before normalisation; a photo of the model's mean colour is about 0 after.
    torch.testing.assert_close(x[:, 0, 0], (-mean / std).view(3))
    rng = np.random.default_rng(0)
    flat = np.array(model.card.mean) * 255 + rng.normal(0, 3, (90, 120, 3))
    centred = model.preprocess(np.clip(flat, 0, 255).astype(np.uint8))
    assert centred.mean(dim=(1, 2)).abs().max() < 0.02
    with pytest.raises(ValueError, match="uint8"):
        model.normalize(hwc.float())
    with pytest.raises(ValueError, match="batch"):
        model.normalize(hwc[0])


def test_normalize_is_to_unit_then_standardize_and_keeps_a_channels_last_batch_so():
    """One normalisation: training augments between the two halves, every forward uses both (bit for bit)."""
    from drray.models.model import to_unit

    model = create_model("test_resnet", image_size=SIZE)
    hwc = torch.randint(0, 256, (2, SIZE, SIZE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    unit = to_unit(hwc)
    assert unit.shape == (2, 3, SIZE, SIZE) and float(unit.min()) >= 0 and float(unit.max()) <= 1
    assert unit.is_contiguous(memory_format=torch.channels_last)  # what CPU convolutions run fastest on
    assert torch.equal(model.normalize(hwc), model.standardize(unit))
    mean, std = model.mean, model.std
    assert torch.equal(model.standardize(unit), (hwc.permute(0, 3, 1, 2).float() / 255.0 - mean) / std)


def test_fit_ordinal_thresholds_improves_qwk():
    # Scores on a compressed scale: the model learned grade * 0.6, so the default cuts are too high.
    rng = np.random.default_rng(0)
    labels = rng.choice(5, size=500, p=[0.4, 0.15, 0.25, 0.1, 0.1])
    scores = labels * 0.6 + rng.normal(0, 0.2, labels.size)
    default = quadratic_weighted_kappa(labels, grades_from_scores(scores, DEFAULT_THRESHOLDS))
    t = fit_ordinal_thresholds(scores, labels)
    fitted = quadratic_weighted_kappa(labels, grades_from_scores(scores, t))
    assert fitted > default + 0.05
    assert all(b > a for a, b in zip(t, t[1:]))
    assert t == fit_ordinal_thresholds(scores, labels)
    # Near grade * 0.6 +- 0.3: each cut between the means of neighbouring grades.
    for k, cut in enumerate(t):
        assert 0.6 * k < cut < 0.6 * (k + 1)


@pytest.mark.parametrize("seed", range(4))
def test_fit_ordinal_thresholds_never_loses_to_the_defaults(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, 120)
    scores = labels + rng.normal(0, 1.0 + seed, labels.size)
    t = fit_ordinal_thresholds(scores, labels)
    assert quadratic_weighted_kappa(labels, grades_from_scores(scores, t)) >= quadratic_weighted_kappa(
        labels, grades_from_scores(scores, DEFAULT_THRESHOLDS))
    with pytest.raises(ValueError, match="differ in length"):
        fit_ordinal_thresholds(scores, labels[:-1])
    with pytest.raises(ValueError, match="empty"):
        fit_ordinal_thresholds([], [])


def test_ordinal_probs_agree_with_pred():
    model = create_model("test_resnet", head="ordinal", image_size=SIZE)
    model.set_ordinal_calibration([-0.3, 0.9, 1.0, 3.2], temperature=0.7)
    scores = torch.cat([torch.linspace(-3, 6, 301), torch.tensor([-0.3, 0.9, 1.0, 3.2])]).unsqueeze(1)
    probs = model.grade_probs(scores)
    pred = model.predict(scores)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(scores)))
    above = 1 - probs.cumsum(dim=1)[:, :4]  # P(grade > k)
    assert torch.equal(pred, (above > 0.5 + 1e-6).sum(dim=1))
    # pred is the median of the grade distribution.
    cdf = probs.cumsum(dim=1)
    assert (cdf.gather(1, pred[:, None]) >= 0.5 - 1e-6).all()
    below = pred > 0
    assert (cdf[below].gather(1, pred[below, None] - 1) < 0.5 + 1e-6).all()
    # Higher scores never lower the expected grade.
    expected = (probs * torch.arange(5)).sum(dim=1)
    assert (expected.diff()[:300] >= -1e-6).all()
    with pytest.raises(ValueError, match="ascending"):
        model.set_ordinal_calibration([0.5, 0.4, 2.5, 3.5])
    with pytest.raises(ValueError, match="ordinal head"):
        create_model("test_resnet", image_size=SIZE).set_ordinal_calibration(DEFAULT_THRESHOLDS)


def test_fit_ordinal_temperature_recovers_tau():
    model = create_model("test_resnet", head="ordinal", image_size=SIZE)
    model.set_ordinal_calibration(DEFAULT_THRESHOLDS, temperature=0.3)
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 5, 4000)
    probs = model.grade_probs(torch.from_numpy(scores).unsqueeze(1)).numpy()
    labels = np.array([rng.choice(5, p=p / p.sum()) for p in probs])
    tau = fit_ordinal_temperature(scores, labels, DEFAULT_THRESHOLDS)
    assert math.isclose(tau, 0.3, rel_tol=0.15)


def test_card_validation():
    base = dict(timm_name="test_resnet", head="ordinal", num_outputs=1, input_size=64, mean=[0.5] * 3,
                std=[0.5] * 3, preprocess={"image_size": 64})
    card = ModelCard(**base)
    assert card.thresholds == list(DEFAULT_THRESHOLDS) and card.temperature == 0.5
    assert ModelCard.from_dict(json.loads(card.to_json())) == card
    for bad, match in [
        (dict(thresholds=[0.5, 1.5, 2.5]), "4 thresholds"),
        (dict(temperature=0.0), "positive"),
        (dict(num_outputs=5), "1 outputs"),
        (dict(preprocess={"image_size": 32}), "differs from input_size"),
        (dict(preprocess={"size": 64}), "PreprocessConfig"),
        (dict(std=[0.5, 0.0, 0.5]), "std > 0"),
        (dict(head="classification", num_outputs=5, thresholds=[0.5, 1.5, 2.5, 3.5]), "ordinal head"),
    ]:
        with pytest.raises(ValueError, match=match):
            ModelCard(**{**base, **bad})


def test_drray_exposes_the_model_api_lazily():
    import drray
    import drray.models.model

    assert drray.create_model is drray.models.model.create_model
    assert drray.load_model is drray.models.model.load_model
    assert drray.save_model is drray.models.model.save_model


def test_cross_fitted_thresholds_do_not_flatter_an_ordinal_head_on_noise():
    """Thresholds fitted and scored on the same images find structure in noise; cross-fitting does not."""
    from drray.scores.grading import quadratic_weighted_kappa
    from drray.models.ordinal import cross_fitted_grades, fit_ordinal_thresholds, grades_from_scores

    in_sample, crossed = [], []
    for seed in range(20):  # validation-sized samples of pure noise: scores carry no grade at all
        rng = np.random.default_rng(seed)
        scores, labels = rng.normal(size=40), rng.integers(0, 5, size=40)
        in_sample.append(quadratic_weighted_kappa(labels, grades_from_scores(scores, fit_ordinal_thresholds(scores, labels))))
        crossed.append(quadratic_weighted_kappa(labels, cross_fitted_grades(scores, labels, folds=2, seed=0)))
    assert np.mean(in_sample) > 0.15 and abs(np.mean(crossed)) < 0.08
    # On a real signal cross-fitting keeps the score.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    signal = labels + rng.normal(scale=0.3, size=200)
    assert quadratic_weighted_kappa(labels, cross_fitted_grades(signal, labels)) > 0.9
    np.testing.assert_array_equal(cross_fitted_grades(signal, labels, seed=1), cross_fitted_grades(signal, labels, seed=1))
