"""Params and MACs: the counter itself, the SC models against their timm baselines and the published counts."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import scnet
from scnet.models import BASELINES

from ..utils import EXPECTED_BASELINES, RELEASED


def test_count_macs_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10, bias=False),
    )
    conv = 4 * 4 * 4 * (3 * 3 * 3)  # output positions x output channels x (kernel x input channels)
    linear = 64 * 10
    assert scnet.count_macs(model, image_size=8) == conv + linear
    assert scnet.count_params(model) == 4 * 3 * 3 * 3 + 64 * 10


def test_count_macs_counts_grouped_conv_and_leaves_mode_alone():
    model = nn.Sequential(nn.Conv2d(3, 6, 1, bias=False), nn.Conv2d(6, 6, 3, padding=1, groups=3, bias=False))
    model.train()
    assert scnet.count_macs(model, image_size=5) == 25 * 6 * 3 + 25 * 6 * (2 * 9)
    assert model.training


@pytest.fixture(scope="module")
def counts() -> dict[str, tuple[int, int]]:
    """(params, MACs at 224 px) for every SC model and baseline.

    Built on the meta device: shapes are all the counts need, and it skips the 224 px compute.
    """
    result = {}
    for name in list(EXPECTED_BASELINES) + list(EXPECTED_BASELINES.values()):
        with torch.device("meta"):
            model = timm.create_model(name)  # the baselines from timm itself, not through scnet
        result[name] = (scnet.count_params(model), scnet.count_macs(model, 224))
    return result


def test_baselines_are_the_expected_pairs():
    assert BASELINES == EXPECTED_BASELINES


@pytest.mark.parametrize("name", list(EXPECTED_BASELINES))
def test_params_within_half_a_percent_of_baseline(name, counts):
    params, base_params = counts[name][0], counts[EXPECTED_BASELINES[name]][0]
    assert abs(params - base_params) <= 0.005 * base_params


# v1d trades extra MACs (the stride moves after the 3x3s) for accuracy; the others must not cost more.
@pytest.mark.parametrize("name", [n for n in EXPECTED_BASELINES if not n.endswith("_v1d")])
def test_macs_not_above_baseline(name, counts):
    assert counts[name][1] <= counts[EXPECTED_BASELINES[name]][1]


@pytest.mark.parametrize("name", RELEASED)
def test_published_params_and_macs(name, counts, published):
    params, macs = counts[name]
    assert params == published[name]["params"]
    assert macs / 1e9 == pytest.approx(published[name]["gmacs"], rel=0.01)


def test_meta_count_equals_real_count():
    """The fixture's meta-device shortcut counts what a real model does."""
    with torch.device("meta"):
        meta = scnet.create_model("scnet50_v1d")
    real = scnet.create_model("scnet50_v1d")
    assert scnet.count_macs(meta, 112) == scnet.count_macs(real, 112)
    assert scnet.count_params(meta) == scnet.count_params(real)
