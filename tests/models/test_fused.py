"""The fused bottleneck (sibling layers as one kernel) against the layer-by-layer one."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import nn

import scnet

from ..utils import randomize_


def _pair(name: str):
    torch.manual_seed(0)
    fused = randomize_(scnet.create_model(name, num_classes=7), seed=1).double()
    plain = copy.deepcopy(fused)
    plain.set_fused(False)
    return fused, plain


@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d", "sc_resnext50_32x4d", "sc_seresnet50"])
def test_train_step_identical(name):
    """Loss, every gradient and every BN running statistic agree after a training forward/backward."""
    fused, plain = _pair(name)
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 5])
    losses = []
    for model in (fused, plain):
        model.train()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-10, atol=0)
    for (n, p), (_, q) in zip(fused.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=n)
    for (n, a), (_, b) in zip(fused.named_buffers(), plain.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0, msg=n)
    # Guard: the step really moved the statistics, so the comparison above had something to compare.
    assert int(fused.layer1[0].bn1_a.num_batches_tracked) == 1


def test_cumulative_momentum_matches():
    """momentum=None (cumulative average) is honoured by the fused BN too."""
    fused, plain = _pair("scnet50")
    for model in (fused, plain):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        model.train()
        for seed in range(2):
            model(torch.randn(2, 3, 100, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    torch.testing.assert_close(fused.layer2[1].bn1_b.running_var, plain.layer2[1].bn1_b.running_var)


def test_other_norm_layers_fall_back():
    """Norm layers the fusion does not know (frozen BN here; SyncBN alike) run layer by layer, correctly: in
    training mode, where the blocks would otherwise fuse."""
    fused, _ = _pair("scnet50")
    fused.eval()
    x = torch.randn(1, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        want = fused(x)
    frozen = freeze_batch_norm_2d(copy.deepcopy(fused)).train()
    assert not any(type(m) is nn.BatchNorm2d for m in frozen.modules())
    with torch.no_grad():
        got = frozen(x)
    torch.testing.assert_close(got, want)


def test_bns_with_running_statistics_in_a_training_model():
    """Fine-tuning with frozen statistics (``model.train()``, then each BN ``.eval()``): the reductions use the
    running statistics and leave them as they are, as each BN by itself does, and give the eval outputs bit for bit."""
    fused, _ = _pair("scnet50")
    fused.eval()
    x = torch.randn(2, 3, 112, 112, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = fused(x)
    buffers = copy.deepcopy(dict(fused.named_buffers()))
    fused.train()
    for m in fused.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    got = fused(x)
    assert torch.equal(got, want)
    for key, value in fused.named_buffers():
        assert torch.equal(value, buffers[key]), key
