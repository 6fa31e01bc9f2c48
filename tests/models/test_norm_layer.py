"""``norm_layer``: every zoo model builds with another normalisation (torchvision's FrozenBatchNorm2d, as detection
models use), keeps the state_dict's names, loads a release file, and builds exactly as before by default."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import scnet

from ..utils import randomize_

COUNTER = ".num_batches_tracked"


@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d", "sc_resnext50_32x4d", "sc_seresnet50", "resnet50d"])
def test_every_norm_is_the_given_one_and_the_names_stay(name: str):
    model = scnet.create_model(name, norm_layer=FrozenBatchNorm2d)
    plain = scnet.create_model(name)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in plain.modules()
    )
    # The release's names; a frozen BN keeps no batch counter (torchvision's convention).
    assert list(model.state_dict()) == [k for k in plain.state_dict() if not k.endswith(COUNTER)]


def test_every_model_of_the_zoo_takes_a_norm_layer():
    for name in scnet.list_models():
        with torch.device("meta"):  # shapes only: 16 networks in a second
            model = scnet.create_model(name, norm_layer="frozenbatchnorm2d")  # a timm name works too
        assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules()), name


def test_the_default_is_the_batch_norm_it_always_was():
    torch.manual_seed(0)
    default = scnet.create_model("scnet50")
    torch.manual_seed(0)
    given = scnet.create_model("scnet50", norm_layer=nn.BatchNorm2d)
    assert [type(m) for m in default.modules()] == [type(m) for m in given.modules()]
    want, got = default.state_dict(), given.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)


def test_a_release_file_loads_into_frozen_norms(scnet50_file, scnet50_state_dict):
    model = scnet.create_model("scnet50", norm_layer=FrozenBatchNorm2d, pretrained=scnet50_file).eval()
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in scnet50_state_dict.items() if not k.endswith(COUNTER))
    plain = scnet.create_model("scnet50", pretrained=scnet50_file).eval()
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a frozen BN is a BN in eval mode (in float64: random weights give logits of ~1e3)
        torch.testing.assert_close(model.double()(x), plain.double()(x), rtol=1e-9, atol=1e-9)


def test_frozen_norms_take_the_plain_layers_in_training():
    """FrozenBatchNorm2d is no training-mode BatchNorm2d: the blocks skip their training kernels."""
    model = randomize_(scnet.create_model("scnet50", norm_layer=FrozenBatchNorm2d), seed=1).double().train()
    block = model.layer2[0]
    x = torch.randn(1, 256, 25, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert block._kernels(x) == "plain"
    got = block(x)
    with torch.no_grad():
        want = copy.deepcopy(block).eval()(x)
    assert torch.equal(got.detach(), want)
