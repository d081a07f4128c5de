"""Model-randomisation sanity check: cascading re-initialisation changes the maps and only the blocks it names."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from drray.cam import CamEngine
from drray.cam.sanity import cascade_blocks, randomised_copies, randomised_copy
from drray.scores.localisation import rank_correlation

SIZE = 64


def trained_like(name: str = "test_resnet") -> torch.nn.Module:
    """A tiny timm model with non-trivial weights everywhere (a stand-in for a trained one)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def mean_rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.nanmean([rank_correlation(x, y) for x, y in zip(a.numpy(), b.numpy())]))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
def test_cascade_covers_every_parameter_once_head_first(name):
    model = timm.create_model(name, pretrained=False, num_classes=5)
    blocks = cascade_blocks(model)
    names = [p for _, ps in blocks for p in ps]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters()) and len(set(names)) == len(names)
    assert blocks[0][0] == "head" and any("fc" in p or "head" in p for p in blocks[0][1])
    stages = [label for label, _ in blocks[1:]]
    info = [d["module"] for d in model.feature_info]
    assert stages == [s for s in reversed(info) if s in stages]  # top down, in timm's stage order


@pytest.mark.timeout(60)
def test_only_the_named_blocks_change_and_the_trained_model_stays():
    model = trained_like()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    blocks = cascade_blocks(model)
    assert [label for label, _ in blocks] == ["head", "layer4", "layer3", "layer2", "layer1", "act1"]
    copy = randomised_copy(model, 2)  # head and layer4
    changed = {p for _, ps in blocks[:2] for p in ps}
    for n, p in copy.named_parameters():
        if n in changed:
            assert not torch.equal(p, before[n]), f"{n} was not re-initialised"
        else:
            assert torch.equal(p, before[n]), f"{n} is outside the re-initialised blocks but changed"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # a deep copy
    again = randomised_copy(model, 2)  # seeded: the same copy twice
    assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), again.parameters()))
    assert not copy.training
    with pytest.raises(ValueError, match="6 cascade blocks.*steps must be 0-6"):
        randomised_copy(model, 7)


@pytest.mark.timeout(60)
def test_randomised_maps_decorrelate_from_the_trained_ones():
    model = trained_like()
    x = images()
    trained = CamEngine(model, target_stride=16)(x)["cams"]
    same = CamEngine(model, target_stride=16)(x)["cams"]
    assert mean_rank_correlation(trained, same) == pytest.approx(1.0)  # the check itself is deterministic
    copies = randomised_copies(model, None)
    assert [label for label, _ in copies] == [label for label, _ in cascade_blocks(model)]
    rho = {}
    for label, copy in copies:
        engine = CamEngine(copy, target_stride=16)
        assert engine.target_layer_name == "layer3"  # same layer names as the trained model
        rho[label] = mean_rank_correlation(trained, engine(x)["cams"])
    # The head alone leaves layer3's activations but changes the gradients reaching them; with
    # layer3 re-initialised the map is another network's.
    assert rho["head"] < 0.99
    assert rho["layer3"] < 0.5 and rho["act1"] < 0.5, rho


@pytest.mark.timeout(60)
def test_drray_models_randomise_inside_the_backbone():
    from drray.models.model import create_model

    torch.manual_seed(0)
    model = create_model("test_efficientnet", head="ordinal", image_size=SIZE).eval()
    blocks = cascade_blocks(model)
    assert all(p.startswith("backbone.") for _, ps in blocks for p in ps)
    assert blocks[0][0] == "head" and "backbone.classifier.weight" in blocks[0][1]
    [(label, copy)] = randomised_copies(model, [3])
    assert label == blocks[2][0] and copy.card == model.card
    out = CamEngine(copy)(images(2))
    assert out["cams"].shape == (2, SIZE, SIZE) and torch.isfinite(out["cams"]).all()
    with pytest.raises(ValueError, match="start at 1"):
        randomised_copies(model, [0])
