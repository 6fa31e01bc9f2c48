"""SelfCalibratedConv2d: shapes and parameters of the 3x3 conv it replaces, the paper's formula, its contracts."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import scnet
from scnet.layers import SelfCalibratedConv2d

from ..utils import randomize_

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:FutureWarning",
    "ignore:`torch.jit.script_method` is deprecated:FutureWarning",
    "ignore:The TorchScript type system doesn't support instance-level annotations:UserWarning",
)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _input(chs: int, h: int = 13, w: int = 11, seed: int = 6) -> torch.Tensor:
    return torch.randn(2, chs, h, w, generator=torch.Generator().manual_seed(seed))


def _layer(in_chs=8, out_chs=8, stride=1, mode="train", **kwargs) -> SelfCalibratedConv2d:
    torch.manual_seed(0)
    return randomize_(SelfCalibratedConv2d(in_chs, out_chs, stride, **kwargs), seed=3).train(mode == "train")


def _close(got: torch.Tensor, want: torch.Tensor, msg: str = "") -> None:
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=msg or None)


# ------------------------------------------------------------------------------------------ shapes, parameters


@pytest.mark.parametrize("chs", [2, 8, 64])
def test_same_parameters_as_the_3x3_conv_it_replaces(chs):
    # Four kernels of (C/2 x C/2 x 3 x 3) hold C x C x 3 x 3 weights: the paper's claim.
    assert _params(SelfCalibratedConv2d(chs, chs, norm_layer=None, bias=False)) == _params(
        nn.Conv2d(chs, chs, 3, padding=1, bias=False)
    )
    # Without norm the default bias sits on K1 and K4: C biases, as the conv's.
    assert _params(SelfCalibratedConv2d(chs, chs, norm_layer=None)) == _params(nn.Conv2d(chs, chs, 3, padding=1))


@pytest.mark.parametrize("in_chs,out_chs", [(8, 16), (16, 8), (6, 10)])
def test_unequal_channels_have_the_documented_kernel_shapes(in_chs, out_chs):
    layer = SelfCalibratedConv2d(in_chs, out_chs, norm_layer=None, bias=False)
    ci, co = in_chs // 2, out_chs // 2
    shapes = sorted(tuple(p.shape) for p in layer.parameters())
    assert shapes == sorted([(co, ci, 3, 3), (ci, ci, 3, 3), (ci, ci, 3, 3), (co, ci, 3, 3)])
    # Batch norm after each of the four kernels: weight and bias per output channel.
    with_bn = SelfCalibratedConv2d(in_chs, out_chs)
    assert _params(with_bn) == _params(layer) + 2 * (co + ci + ci + co)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 4


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("size", [(13, 11), (8, 8), (9, 4)])
def test_output_shape_is_the_conv_s(stride, size):
    x = _input(8, *size)
    conv = nn.Conv2d(8, 12, 3, stride, padding=1)
    with torch.no_grad():
        assert _layer(8, 12, stride, mode="eval")(x).shape == conv(x).shape


def test_odd_or_invalid_arguments_are_one_line():
    for kwargs, message in [
        ({"in_chs": 3, "out_chs": 8}, "in_chs must be an even integer >= 2 (half goes to K1, half to the "),
        ({"in_chs": 8, "out_chs": 7}, "out_chs must be an even integer >= 2"),
        ({"in_chs": 0, "out_chs": 8}, "got 0"),
        ({"in_chs": 8, "out_chs": 8, "stride": 0}, "stride must be an integer >= 1, got 0"),
        ({"in_chs": 8, "out_chs": 8, "pool_type": "min"}, "pool_type must be one of 'avg', 'max', got 'min'"),
        ({"in_chs": 8, "out_chs": 8, "pooling_r": 0}, "pooling_r must be an integer >= 1, got 0"),
    ]:
        with pytest.raises(ValueError) as info:
            SelfCalibratedConv2d(**kwargs)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_too_small_or_wrong_input_is_an_error():
    layer = _layer(mode="eval")
    with pytest.raises(scnet.InputTooSmallError, match="at least 4x4"):
        layer(_input(8, 3, 9))
    with pytest.raises(RuntimeError, match="sum exactly to 10"):
        layer(_input(10))  # another channel count, as nn.Conv2d(8, ...) would refuse it


# ------------------------------------------------------------------------------------------ the formula


def _reference(layer: SelfCalibratedConv2d, x: torch.Tensor, r: int, mode: str) -> torch.Tensor:
    """cat(K1(x1), K4(K3(x2) * sigmoid(x2 + up(K2(pool_r(x2)))))) written from the paper, with the layer's weights;
    its norm modules (torch's own BatchNorm2d or Identity) applied where the paper's BN sits. In training mode
    they update their running statistics: pass a copy."""
    h = x.shape[1] // 2
    x1, x2 = x[:, :h], x[:, h:]
    (c1, n1), sc = layer.k1, layer.scconv
    c2, n2 = sc.k2[1], sc.k2[2]
    (c3, n3), (c4, n4) = sc.k3, sc.k4
    s = layer.stride
    y1 = n1(F.conv2d(x1, c1.weight, c1.bias, s, 1))
    pooled = F.avg_pool2d(x2, r) if mode == "avg" else F.max_pool2d(x2, r)
    context = n2(F.conv2d(pooled, c2.weight, c2.bias, 1, 1))
    gate = torch.sigmoid(x2 + F.interpolate(context, size=x2.shape[-2:], mode="nearest"))
    y2 = n4(F.conv2d(n3(F.conv2d(x2, c3.weight, c3.bias, 1, 1)) * gate, c4.weight, c4.bias, s, 1))
    return torch.cat([y1, y2], dim=1)


@pytest.mark.parametrize(
    "in_chs,out_chs,stride,kwargs",
    [
        (8, 8, 1, {}),
        (8, 12, 2, {}),
        (12, 8, 2, {"pool_type": "max"}),
        (8, 16, 1, {"norm_layer": None}),
        (8, 8, 2, {"bias": True}),  # a bias before BN: the lean kernel (bias-free) must step aside
    ],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_equals_the_paper_s_formula(in_chs, out_chs, stride, kwargs, mode):
    layer = _layer(in_chs, out_chs, stride, mode, **kwargs)
    reference = copy.deepcopy(layer)
    x = _input(in_chs)
    _close(layer(x), _reference(reference, x, 4, kwargs.get("pool_type", "avg")))
    # Running statistics too: a conv bias before a training-mode BN cancels in the output but not in them.
    for (key, b), (_, c) in zip(layer.named_buffers(), reference.named_buffers(), strict=True):
        _close(b.float(), c.float(), key)


@pytest.mark.parametrize("in_chs,out_chs,stride", [(8, 8, 1), (8, 12, 2)])
def test_lean_training_kernel_matches_the_plain_layers(in_chs, out_chs, stride):
    """SCConv's lean training kernel now sees a K4 that changes the channel count: same values and gradients."""
    lean = _layer(in_chs, out_chs, stride)
    plain = copy.deepcopy(lean)
    plain.scconv.fused = False
    x = _input(in_chs).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    out, want = lean(x), plain(x2)
    _close(out, want)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    (want * weight).sum().backward()
    _close(x.grad, x2.grad)
    for (key, p), (_, q) in zip(lean.named_parameters(), plain.named_parameters(), strict=True):
        assert p.grad is not None, key
        _close(p.grad, q.grad, key)
    for (key, b), (_, c) in zip(lean.named_buffers(), plain.named_buffers(), strict=True):
        _close(b.float(), c.float(), key)


# ------------------------------------------------------------------------------------------ contracts

CONTRACT_CASES = [(8, 8, 1, {}), (8, 12, 2, {}), (8, 8, 2, {"norm_layer": None})]


@pytest.mark.parametrize("in_chs,out_chs,stride,kwargs", CONTRACT_CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_scripts_and_traces(in_chs, out_chs, stride, kwargs, mode):
    layer = _layer(in_chs, out_chs, stride, mode, **kwargs)
    x = _input(in_chs)
    want = copy.deepcopy(layer)(x)
    _close(torch.jit.script(copy.deepcopy(layer))(x), want)
    traced = torch.fx.symbolic_trace(copy.deepcopy(layer))
    _close(traced(x), want)
    _close(torch.jit.script(traced)(x), want)
    with pytest.raises(scnet.InputTooSmallError, match="feature map of at least"):
        traced(x[..., :3])


@pytest.mark.parametrize("in_chs,out_chs,stride,kwargs", CONTRACT_CASES[1:])
def test_compile_fullgraph_forward_backward(in_chs, out_chs, stride, kwargs):
    torch._dynamo.reset()
    eager = _layer(in_chs, out_chs, stride, **kwargs)
    compiled_copy = copy.deepcopy(eager)
    compiled = torch.compile(compiled_copy, fullgraph=True, backend="aot_eager")
    x = _input(in_chs)
    got, want = compiled(x), eager(x)
    _close(got, want)
    got.sum().backward()
    want.sum().backward()
    for (key, p), (_, q) in zip(compiled_copy.named_parameters(), eager.named_parameters(), strict=True):
        assert p.grad is not None, key
        _close(p.grad, q.grad, key)
    for (key, b), (_, c) in zip(compiled_copy.named_buffers(), eager.named_buffers(), strict=True):
        _close(b.float(), c.float(), key)


@pytest.mark.parametrize("in_chs,out_chs,stride,kwargs", CONTRACT_CASES)
def test_torch_export_equals_eager(in_chs, out_chs, stride, kwargs):
    layer = _layer(in_chs, out_chs, stride, "eval", **kwargs)
    x = _input(in_chs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(layer, (x,))
    with torch.no_grad():
        _close(program.module()(x), layer(x))
        _close(program.module()(x * 0.5), layer(x * 0.5))
