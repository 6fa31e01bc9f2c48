"""SCNet against an independent functional re-implementation of the original release, and its options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import group_parameters

import scnet
from scnet.models.bottleneck import SCBottleneck

from ..utils import randomize_
from . import reference_release

# Even and odd sizes: odd ones exercise the floor of the r=4 pool and the ceil of the v1d shortcut pool.
SHAPES = [(2, 3, 128, 128), (1, 3, 113, 101)]
TOL = dict(rtol=1e-9, atol=1e-9)  # float64 on both sides: only summation order may differ


def _random_model(name: str, seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_(scnet.create_model(name, **kwargs), seed=seed).double().eval()


@pytest.fixture(scope="module", params=["scnet50", "scnet50_v1d"])
def released_model(request):
    return request.param, _random_model(request.param, seed=3)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[2:])))
def test_eval_forward_matches_reference(released_model, shape):
    name, model = released_model
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        got = model(x)
        want = reference_release.forward(model.state_dict(), x)
    assert got.shape == (shape[0], 1000)
    # Scale the absolute tolerance to the logits so the check stays tight whatever their magnitude.
    torch.testing.assert_close(got, want, rtol=TOL["rtol"], atol=TOL["atol"] * want.abs().max().item())


def test_reference_detects_a_swapped_branch(released_model):
    """Guard on the test itself: with random weights, swapping two same-shape 3x3s must change the logits."""
    name, model = released_model
    x = torch.randn(*SHAPES[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    sd = dict(model.state_dict())
    sd["layer3.0.k1.0.weight"], sd["layer3.0.scconv.k3.0.weight"] = (
        sd["layer3.0.scconv.k3.0.weight"],
        sd["layer3.0.k1.0.weight"],
    )
    with torch.no_grad():
        got = model(x)
        swapped = reference_release.forward(sd, x)
    assert not torch.allclose(got, swapped, rtol=1e-3, atol=1e-3)


def test_dilated_forward_matches_reference():
    """output_stride=16: layer4 keeps layer3's resolution and dilates its 3x3s by 2."""
    model = _random_model("scnet50", seed=5, output_stride=16)
    x = torch.randn(*SHAPES[0], generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        feats = model.forward_features(x)
        want = reference_release.forward_features(model.state_dict(), x, output_stride=16)
    assert feats.shape == (2, 2048, 8, 8)
    torch.testing.assert_close(feats, want, rtol=TOL["rtol"], atol=TOL["atol"] * want.abs().max().item())


def test_train_step_matches_reference():
    """Train mode: same loss, same gradient for every parameter, same updated BN running stats."""
    model = _random_model("scnet50", seed=7, num_classes=10).train()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    target = torch.tensor([3, 7])
    # Reference state: detached copies; parameters become leaves so autograd gives their gradients.
    params = dict(model.named_parameters())
    ref_sd = {k: v.detach().clone().requires_grad_(k in params) for k, v in model.state_dict().items()}

    loss = F.cross_entropy(model(x), target)
    loss.backward()
    ref_loss = F.cross_entropy(reference_release.forward(ref_sd, x, training=True), target)
    ref_loss.backward()

    torch.testing.assert_close(loss, ref_loss, rtol=1e-9, atol=1e-12)
    for name, p in params.items():
        g, ref_g = p.grad, ref_sd[name].grad
        torch.testing.assert_close(g, ref_g, rtol=1e-7, atol=1e-9 * ref_g.abs().max().item(), msg=name)
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            torch.testing.assert_close(buf, ref_sd[name].detach(), rtol=1e-9, atol=1e-12, msg=name)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = scnet.create_model("scnet50", num_classes=5)
    x = torch.randn(2, 3, 97, 97)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain)


@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d"])
def test_group_matcher_for_layer_decay(name):
    """timm's layer-wise lr decay groups: the stem, then one group per block, then the head."""
    with torch.device("meta"):
        model = scnet.create_model(name)
    groups = list(group_parameters(model, model.group_matcher()).values())
    assert len(groups) == 1 + 16 + 1
    assert all(n.startswith(("conv1", "bn1.")) for n in groups[0])
    assert all(n.startswith("layer1.0.") for n in groups[1]) and all(n.startswith("layer4.2.") for n in groups[-2])
    assert groups[-1] == ["fc.weight", "fc.bias"]


def _blocks(model) -> list[SCBottleneck]:
    return [m for m in model.modules() if isinstance(m, SCBottleneck)]


def test_drop_path_rates_and_stochasticity():
    model = scnet.create_model("scnet50", num_classes=5, drop_path_rate=0.1)
    blocks = _blocks(model)
    # No DropPath (rate 0) counts as 0: the first block has nothing to drop.
    rates = [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0 for b in blocks]
    assert len(rates) == 16
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 16))
    assert sum(isinstance(b.drop_path, DropPath) for b in blocks) == 15

    torch.manual_seed(0)
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        train_outs = [model.train()(x) for _ in range(2)]
        eval_outs = [model.eval()(x) for _ in range(2)]
    # BN in train mode is deterministic for a fixed batch, so any difference comes from dropped paths.
    assert not torch.allclose(train_outs[0], train_outs[1])
    torch.testing.assert_close(eval_outs[0], eval_outs[1], rtol=0, atol=0)


def test_no_drop_path_by_default():
    assert not any(isinstance(m, DropPath) for m in scnet.create_model("scnet50").modules())


@pytest.mark.parametrize("zero_init_last, value", [(True, 0.0), (False, 1.0)])
def test_zero_init_last(zero_init_last, value):
    kwargs = {"zero_init_last": True} if zero_init_last else {}  # False is the default
    blocks = _blocks(scnet.create_model("scnet50", **kwargs))
    assert len(blocks) == 16
    for b in blocks:
        assert torch.all(b.bn3.weight == value)


def test_forward_features_and_head():
    torch.manual_seed(0)
    model = scnet.create_model("scnet50").eval()
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        full = model(x)
    assert feats.shape == (2, 2048, 128 // 32, 160 // 32)
    assert pre.shape == (2, 2048)
    torch.testing.assert_close(pre, feats.mean(dim=(2, 3)))  # pre-logits are the global average pool
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(logits, full)


def test_channels_last_matches_contiguous():
    # Random weights keep activations well scaled. A fresh model's (no zero-init) grow to ~1e4 by layer4,
    # where the float32 rounding of the two formats' different kernels is amplified to ~1% of the logits.
    model = _random_model("scnet50", seed=9).float()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        want = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert model.layer4[0].scconv.k2[1].weight.is_contiguous(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item())
