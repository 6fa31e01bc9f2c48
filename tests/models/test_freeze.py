"""Freezing the stem and stages (``scnet.models.freeze``, the trainer's ``model.freeze``): no gradients, BN
statistics kept as loaded whatever ``model.train()`` says, the plain layers in frozen blocks, the state_dict
unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scnet
from scnet.layers.dispatch import training_kernels
from scnet.models import EvalBatchNorm2d, freezable, freeze

from ..utils import randomize_

PARTS = ["stem", "layer1", "layer2", "layer3", "layer4"]


def _model(name: str = "scnet50") -> nn.Module:
    torch.manual_seed(0)
    return randomize_(scnet.create_model(name, num_classes=5), seed=1)


def _in(name: str, parts: list[str]) -> bool:
    return name.startswith(tuple(p + "." for p in parts))


def _frozen_names(parts: list[str]) -> list[str]:
    return [*(["conv1", "bn1"] if "stem" in parts else []), *(p for p in parts if p != "stem")]


def test_parts_of_the_zoo_models():
    for name in ("scnet50", "scnet50_v1d", "resnet50"):
        model = scnet.create_model(name)
        assert list(freezable(model)) == PARTS
        assert freezable(model)["stem"] == ["conv1", "bn1", "maxpool"]  # the classifier is never a part
    with pytest.raises(ValueError, match=r"scnet50 has no part 'fc' to freeze; choose from stem, layer1, .*layer4$"):
        freeze(scnet.create_model("scnet50"), ["fc"])


def test_parts_of_another_timm_model():
    """A timm model converted with model.convert_sc has the parts its group_matcher and top-level modules give."""
    import timm

    model = timm.create_model("mobilenetv3_small_050")
    assert freezable(model) == {"stem": ["conv_stem", "bn1"], "blocks": ["blocks"], "conv_head": ["conv_head"]}
    with pytest.raises(ValueError, match="^bn1 is a BatchNormAct2d: only the statistics of BatchNorm2d and Sync"):
        freeze(model, ["stem"])


def test_frozen_parts_keep_weights_and_statistics_while_the_rest_trains():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    freeze(model, ["stem", "layer1"])
    frozen = _frozen_names(["stem", "layer1"])
    # The state_dict keeps every name and value: checkpoints of a frozen run load into the plain model.
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert isinstance(module, EvalBatchNorm2d) == _in(name + ".", frozen), name
    model.train()  # what the trainer calls each epoch: the frozen BNs stay in eval mode
    x = torch.randn(2, 3, 100, 100, generator=torch.Generator().manual_seed(2))
    F.cross_entropy(model(x), torch.tensor([1, 3])).backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    for name, param in model.named_parameters():
        assert param.requires_grad != _in(name, frozen), name
        assert (param.grad is None) == _in(name, frozen), name
    for key, value in model.state_dict().items():
        if _in(key, frozen):
            assert torch.equal(value, before[key]), key  # weights and BN buffers, bit for bit
        elif key.endswith(("weight", "running_mean", "num_batches_tracked")):
            assert not torch.equal(value, before[key]), key


def test_frozen_blocks_run_the_plain_layers():
    """The SC blocks' training kernels (lean, or Triton on CUDA) assume training-mode stock BatchNorm2d: a frozen
    block must run its layers one by one, normalising with the running statistics, in a training model."""
    model = freeze(_model().double(), ["stem", "layer1"]).train()
    x = torch.randn(2, 256, 25, 25, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    frozen, trained = model.layer1[1], model.layer2[1]
    assert frozen._kernels(x) == "plain"
    sc = frozen.scconv
    assert training_kernels(x[:, :32], sc.fused, sc.triton, [sc.k3[1]]) == "plain"
    assert trained._kernels(torch.randn(2, 512, 13, 13)) in ("lean", "triton")  # the kernels, where not frozen
    got = frozen(x)
    with torch.no_grad():
        want = copy.deepcopy(frozen).eval()(x)  # the block in evaluation: plain layers, running statistics
    assert torch.equal(got.detach(), want)


def test_sync_bn_is_frozen_too():
    """The trainer freezes after SyncBatchNorm's conversion (which would turn a frozen BN back into a training
    one): a SyncBatchNorm in a frozen part becomes an EvalBatchNorm2d with its values."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(_model())
    stats = model.layer1[0].bn1_a.running_var.clone()
    freeze(model, ["layer1"])
    bn = model.layer1[0].bn1_a
    assert type(bn) is EvalBatchNorm2d and not bn.training and torch.equal(bn.running_var, stats)
    assert type(model.layer2[0].bn1_a) is nn.SyncBatchNorm
