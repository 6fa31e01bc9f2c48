"""``create_model``: every zoo name trains, feature extraction works, bad names fail helpfully."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import scnet
from scnet.models import BASELINE_MODELS, SC_MODELS

from ..utils import EXPECTED_BASELINES, is_deep


def test_zoo_names():
    assert set(SC_MODELS) == set(EXPECTED_BASELINES)
    assert set(BASELINE_MODELS) == set(EXPECTED_BASELINES.values())
    assert scnet.list_models() == list(SC_MODELS) + list(BASELINE_MODELS)
    assert scnet.list_models(include_baselines=False) == list(SC_MODELS)


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if is_deep(n) else n for n in names]


@pytest.mark.parametrize("name", _params(list(EXPECTED_BASELINES) + list(EXPECTED_BASELINES.values())))
def test_forward_backward(name):
    torch.manual_seed(0)
    model = scnet.create_model(name, num_classes=5).train()
    x = torch.randn(2, 3, 112, 112)  # above the 97 px minimum of the SC models
    out = model(x)
    assert out.shape == (2, 5)
    F.cross_entropy(out, torch.tensor([0, 4])).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(ValueError, match="scnet50"):
        scnet.create_model("scnet05")


FEATURE_CHANNELS = (64, 256, 512, 1024, 2048)


def _features(builder: str, name: str, **kwargs):
    if builder == "scnet":
        return scnet.create_model(name, features_only=True, **kwargs)
    return timm.create_model(name, features_only=True, **kwargs)


@pytest.mark.parametrize("builder", ["scnet", "timm"])
@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d"])
def test_features_only(builder, name):
    torch.manual_seed(0)
    model = _features(builder, name).eval()
    assert tuple(model.feature_info.channels()) == FEATURE_CHANNELS
    assert tuple(model.feature_info.reduction()) == (2, 4, 8, 16, 32)
    with torch.no_grad():
        maps = model(torch.randn(2, 3, 128, 128))
    want = [(2, c, 128 // r, 128 // r) for c, r in zip(FEATURE_CHANNELS, (2, 4, 8, 16, 32), strict=True)]
    assert [tuple(m.shape) for m in maps] == want


@pytest.mark.parametrize("builder", ["scnet", "timm"])
def test_features_only_out_indices_and_output_stride(builder):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        maps = _features(builder, "scnet50", out_indices=(2, 3, 4)).eval()(x)
        assert [tuple(m.shape) for m in maps] == [(2, 512, 16, 16), (2, 1024, 8, 8), (2, 2048, 4, 4)]
        dilated = _features(builder, "scnet50", out_indices=(2, 3, 4), output_stride=8).eval()
        assert tuple(dilated.feature_info.reduction()) == (8, 8, 8)
        assert [tuple(m.shape) for m in dilated(x)] == [(2, 512, 16, 16), (2, 1024, 16, 16), (2, 2048, 16, 16)]


def test_features_only_with_classification_weights(scnet50_file, scnet50_state_dict):
    model = scnet.create_model("scnet50", features_only=True, pretrained=scnet50_file)
    backbone = model.state_dict()
    assert "layer4.2.scconv.k2.1.weight" in backbone and not any(k.startswith("fc.") for k in backbone)
    for key, value in backbone.items():
        assert torch.equal(value, scnet50_state_dict[key]), key
