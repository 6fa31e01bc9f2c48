"""The registered family: checkpoint layout of the release, timm registry citizenship, published metadata."""

from __future__ import annotations

import pytest
import timm
import timm.data
import torch

import scnet
from scnet.models import PUBLISHED, published_weights

from ..utils import EXPECTED_BASELINES, IMAGENET_MEAN, IMAGENET_STD, RELEASED


@pytest.mark.parametrize("name", RELEASED)
def test_state_dict_matches_published_layout(name, layout):
    # Names, order and shapes only: the meta device skips allocating and initialising the weights.
    with torch.device("meta"):
        model = scnet.create_model(name)
    got = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    want = layout[name]["state_dict"]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"tensor #{i}"
    assert scnet.count_params(model) == layout[name]["params"]


def test_published_metadata(published):
    released = {name for name, row in published.items() if row["checkpoint"]}
    assert set(PUBLISHED) == released
    for name in released:
        weights = published_weights(name)
        assert weights.file == published[name]["checkpoint"]
        assert weights.top1 == published[name]["top1"]
    assert published_weights("scnet101_v1d") is None  # announced, never published
    assert published_weights("sc_resnext50_32x4d") is None


def test_timm_registry_lists_the_family():
    listed = set(timm.list_models("scnet*")) | set(timm.list_models("sc_*"))
    assert set(EXPECTED_BASELINES) <= listed


def test_timm_create_model_and_data_config():
    model = timm.create_model("scnet50", num_classes=7).eval()
    assert isinstance(model, scnet.models.SCNet)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 7)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["crop_pct"] == 0.875
    assert cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == pytest.approx(IMAGENET_MEAN)
    assert cfg["std"] == pytest.approx(IMAGENET_STD)


def test_timm_loads_a_local_file(scnet50_file, scnet50_state_dict):
    """timm's own pretrained path (not scnet.load_weights), pointed at a local file."""
    model = timm.create_model("scnet50", pretrained=True, pretrained_cfg_overlay=dict(file=str(scnet50_file)))
    for key, value in model.state_dict().items():
        assert torch.equal(value, scnet50_state_dict[key]), key
