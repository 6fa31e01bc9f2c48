"""The Triton kernels of the SC block (scnet/layers/triton_*.py) against the plain layers, run by Triton's
interpreter on CPU tensors.

Not collected by the suite itself (the file name does not start with ``test_``): ``test_triton_kernels.py`` runs
it in a subprocess with ``TRITON_INTERPRET=1``, which must be set before triton's kernels are defined, i.e. before
scnet's kernel modules are imported. Run it alone the same way:

    TRITON_INTERPRET=1 python -m pytest -q tests/layers/triton_cases.py

References are PyTorch's own layers under autograd, in float64 (the interpreter computes float64 in float64), so
a tolerance of 1e-12 leaves room only for summation order. Maps are small: the interpreter runs one program at a
time, in numpy.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

if os.environ.get("TRITON_INTERPRET") != "1":  # imported by mistake: the kernels would need a GPU
    raise RuntimeError("tests/layers/triton_cases.py needs TRITON_INTERPRET=1 (run by test_triton_kernels.py)")

from scnet.bench.model import saved_activation_bytes  # noqa: E402
from scnet.layers import SelfCalibratedConv2d  # noqa: E402
from scnet.layers.dispatch import training_kernels  # noqa: E402
from scnet.layers.triton_bn import batch_stats, bn_apply, bn_backward  # noqa: E402
from scnet.layers.triton_calibration import (  # noqa: E402
    calibration_forward,
    calibration_grads,
    calibration_sums,
    source_rows,
)
from scnet.models.bottleneck import SCBottleneck  # noqa: E402

from ..utils import randomize_  # noqa: E402

CL = torch.channels_last
F64 = dict(rtol=1e-12, atol=1e-12)


def _maps(*shape: int, count: int, layout=torch.contiguous_format, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=dtype).contiguous(memory_format=layout) for _ in range(count)]


# ------------------------------------------------------------------------------------------------- BatchNorm


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL], ids=["nchw", "channels_last"])
def test_batch_norm_relu_forward_and_backward_match_autograd(layout):
    """Statistics, running buffers, output and every gradient of relu(bn(y)) against F.batch_norm."""
    (y, grad) = _maps(3, 70, 5, 7, count=2, layout=layout)  # 70 channels: two channel blocks, a partial one
    y = y * 3 + 2
    weight, bias = torch.rand(70, dtype=torch.float64) + 0.5, torch.randn(70, dtype=torch.float64)
    running = torch.randn(70, dtype=torch.float64), torch.rand(70, dtype=torch.float64) + 0.5
    ref_running = [t.clone() for t in running]
    mean, invstd = batch_stats(y, *running, 0.1, 1e-5, torch.float64)
    out = bn_apply(y, mean, invstd, weight, bias, torch.empty_like(y), relu=True)

    y_ref, w_ref, b_ref = (t.clone().requires_grad_() for t in (y, weight, bias))
    ref = F.batch_norm(y_ref, *ref_running, w_ref, b_ref, True, 0.1, 1e-5).relu()
    ref.backward(grad)
    torch.testing.assert_close(out, ref, **F64)
    torch.testing.assert_close(running[0], ref_running[0], **F64)
    torch.testing.assert_close(running[1], ref_running[1], **F64)

    grad_y = torch.empty_like(y)
    grad_w, grad_b = bn_backward(grad, y, mean, invstd, weight, bias, True, grad_y, y.dtype)
    torch.testing.assert_close(grad_y, y_ref.grad, **F64)
    torch.testing.assert_close(grad_w, w_ref.grad, **F64)
    torch.testing.assert_close(grad_b, b_ref.grad, **F64)


def test_batch_norm_reads_and_writes_channel_slices():
    """The concatenation's halves: a BN over a slice of a wider map, written into a slice of another, and its
    backward in place over its own gradient. No ReLU; float32 within float32's rounding."""
    (wide, out_wide) = _maps(2, 24, 6, 6, count=2, layout=CL, dtype=torch.float32)
    y = wide[:, 8:20]  # strided: 12 of 24 channels
    weight, bias = torch.rand(12) + 0.5, torch.randn(12)
    mean, invstd = batch_stats(y, None, None, 0.1, 1e-5, torch.float32)
    before = out_wide.clone()
    bn_apply(y, mean, invstd, weight, bias, out_wide[:, 4:16], relu=False)
    torch.testing.assert_close(out_wide[:, 4:16], F.batch_norm(y, None, None, weight, bias, True, 0.1, 1e-5))
    torch.testing.assert_close(out_wide[:, :4], before[:, :4], rtol=0, atol=0)  # nothing written outside
    torch.testing.assert_close(out_wide[:, 16:], before[:, 16:], rtol=0, atol=0)

    grad = torch.randn_like(y)
    y_ref, w_ref = y.clone().requires_grad_(), weight.clone().requires_grad_()
    F.batch_norm(y_ref, None, None, w_ref, bias, True, 0.1, 1e-5).backward(grad)
    grad_w, _ = bn_backward(grad, y, mean, invstd, weight, bias, False, grad, torch.float32)  # in place
    torch.testing.assert_close(grad, y_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_w, w_ref.grad, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- calibration


def test_nearest_source_rows_are_pytorchs():
    """The windows are nearest upsampling's own: 14 -> 3 is rows 0-4, 5-9, 10-13 (not h // 4), and the sizes
    where float32 rounding moves a window's start (82 -> 16 with r = 5) follow F.interpolate too."""
    assert source_rows(14, 3) == (0,) * 5 + (1,) * 5 + (2,) * 4
    for out_size, in_size in [(56, 14), (28, 7), (14, 3), (13, 3), (7, 1), (9, 2), (82, 16), (74, 24)]:
        index = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
        expected = F.interpolate(index, size=(out_size, 1), mode="nearest").flatten().long().tolist()
        assert list(source_rows(out_size, in_size)) == expected, (out_size, in_size)


def _calibration_reference(x, y3, ctx, weight, bias, grad, pool_grad, r):
    """Autograd through the plain ops: bn(y3) * sigmoid(x + up(ctx)), plus the r x r average pool of x whose
    output gradient is ``pool_grad`` (the path x -> pool -> k2 -> ctx, cut at the pool)."""
    x, y3, ctx, weight, bias = (t.clone().requires_grad_() for t in (x, y3, ctx, weight, bias))
    up = F.interpolate(ctx, size=x.shape[-2:], mode="nearest")
    product = F.batch_norm(y3, None, None, weight, bias, True, 0.1, 1e-5) * torch.sigmoid(x + up)
    ((product * grad).sum() + (F.avg_pool2d(x, r) * pool_grad).sum()).backward()
    return product.detach(), x.grad, y3.grad, ctx.grad, weight.grad, bias.grad


@pytest.mark.parametrize(
    "size,r,layout,batch",
    [
        ((56, 56), 4, CL, 1),
        ((28, 28), 4, torch.contiguous_format, 2),
        ((14, 14), 4, CL, 2),
        ((14, 14), 4, torch.contiguous_format, 2),
        ((7, 7), 4, CL, 2),
        ((13, 14), 4, CL, 2),
        ((9, 5), 4, torch.contiguous_format, 2),
        ((82, 5), 5, CL, 1),
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v).split(".")[-1],
)
def test_calibration_kernels_match_autograd(size, r, layout, batch):
    """Forward product, context gradient, BN gradients, and the gradients for x (the pool's backward folded in)
    and y3, at the SC block's map sizes and odd ones (windows of unequal size, rows past the last whole pooling
    window)."""
    H, W = size
    h, w = H // r, W // r
    x, y3, grad = _maps(batch, 6, H, W, count=3, layout=layout)
    ctx, pool_grad = _maps(batch, 6, h, w, count=2, layout=layout, seed=1)
    weight, bias = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
    mean, invstd = batch_stats(y3, None, None, 0.1, 1e-5, torch.float64)
    bn = (mean, invstd, weight, bias)
    expected = _calibration_reference(x, y3, ctx, weight, bias, grad, pool_grad, r)

    product = calibration_forward(x, y3, ctx, bn, torch.empty_like(x), r)
    grad_ctx, sum_g, sum_gx = calibration_sums(grad, x, y3, ctx, bn, r)
    grad_x, grad_y3 = calibration_grads(grad, x, y3, ctx, bn, (sum_g, sum_gx), pool_grad, r)
    names = ("product", "grad_x", "grad_y3", "grad_ctx", "grad_weight", "grad_bias")
    for name, got, want in zip(names, (product, grad_x, grad_y3, grad_ctx, sum_gx, sum_g), expected, strict=True):
        torch.testing.assert_close(got, want, **F64, msg=lambda m, name=name: f"{name}: {m}")
    assert grad_x.stride() == x.stride() and grad_y3.stride() == y3.stride()


# ---------------------------------------------------------------------------------------------- whole blocks


def _block_pair(layout, avd: bool = False, stride: int = 2, dtype=torch.float64):
    """An SC bottleneck with a projection shortcut and random weights, and a copy that runs the plain layers."""
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=stride, bias=False), nn.BatchNorm2d(32))
    fused = randomize_(SCBottleneck(16, 8, stride=stride, downsample=down, avd=avd), seed=1)
    fused = fused.to(dtype, memory_format=layout).train()
    plain = copy.deepcopy(fused)
    plain.fused = plain.scconv.fused = False
    return fused, plain


def _step(module, x, dtype=None):
    """One forward and backward (of the output's squares, under bf16 autocast with ``dtype``): output, gradients."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        out = module(x)
    out.float().pow(2).sum().backward()
    return out.detach(), x.grad, {n: p.grad for n, p in module.named_parameters()}


def _assert_same_steps(fused, plain, x, rtol=1e-12, autocast=None) -> None:
    kernels = training_kernels(x, fused.fused, fused.triton, [fused.k1[1]])
    assert kernels == "triton"  # the interpreter puts CPU tensors on the Triton path
    (out, grad_x, grads), (out_ref, grad_x_ref, grads_ref) = _step(fused, x, autocast), _step(plain, x, autocast)
    atol = rtol * float(out_ref.abs().max())
    torch.testing.assert_close(out, out_ref, rtol=rtol, atol=atol)
    assert out.stride() == out_ref.stride() and grad_x.stride() == grad_x_ref.stride()  # layouts kept
    torch.testing.assert_close(grad_x, grad_x_ref, rtol=rtol, atol=rtol * float(grad_x_ref.abs().max()))
    for name, ref in grads_ref.items():
        scale = float(ref.abs().max())
        torch.testing.assert_close(grads[name], ref, rtol=rtol, atol=rtol * scale, msg=name)
    for (name, a), (_, b) in zip(fused.named_buffers(), plain.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol, msg=name)  # running stats; batches tracked: exact


@pytest.mark.parametrize(
    "layout,avd,stride",
    [(CL, False, 1), (torch.contiguous_format, False, 2), (CL, True, 2)],
    ids=["channels_last", "nchw-stride2", "channels_last-avd"],
)
def test_block_step_matches_plain_layers(layout, avd, stride):
    """A training step of the SC bottleneck on the Triton path: output, input gradient, every parameter's
    gradient and every BN buffer equal the plain layers' (float64), including num_batches_tracked."""
    fused, plain = _block_pair(layout, avd, stride)
    x = _maps(2, 16, 14, 14, count=1, layout=layout)[0]
    _assert_same_steps(fused, plain, x)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_block_step_under_bf16_autocast():
    """bf16 autocast, as GPU training runs. The fused maps are computed in float32 and rounded once where the plain
    layers round every intermediate to bf16, so elementwise equality is not the measure (a ReLU mask flips where
    two roundings disagree); both are compared with the float64 step instead, and the fused one must be at least
    as accurate: output, input gradient and every parameter's gradient (relative L2 error)."""
    fused, plain = _block_pair(CL, dtype=torch.float32)
    truth = copy.deepcopy(plain).double()
    x = _maps(2, 16, 14, 14, count=1, layout=CL, dtype=torch.float32)[0]
    steps = {"fused": _step(fused, x, True), "plain": _step(plain, x, True)}
    assert steps["fused"][0].dtype == steps["plain"][0].dtype == torch.bfloat16
    out_ref, grad_x_ref, grads_ref = _step(truth, x.double())
    errors = {
        name: [_relative_error(out, out_ref), _relative_error(grad_x, grad_x_ref)]
        + [_relative_error(grads[n], grads_ref[n]) for n in grads_ref]
        for name, (out, grad_x, grads) in steps.items()
    }
    fused, plain = errors["fused"], errors["plain"]
    assert fused[0] <= 1.25 * plain[0] + 2e-3 and fused[1] <= 1.25 * plain[1] + 2e-3, (fused[:2], plain[:2])
    # Parameter by parameter the two roundings' errors scatter (measured: fused 0.1-4.4%, plain 0.1-27%); in all,
    # the fused step must be the more accurate, and none of its gradients far off.
    assert sum(fused[2:]) <= sum(plain[2:]), (fused, plain)
    assert max(fused) < 0.06, dict(zip(["output", "grad_x", *grads_ref], fused, strict=True))


def test_compiled_block_keeps_the_triton_ops():
    """torch.compile(fullgraph=True) runs the custom ops (forward and backward as opaque nodes, fake
    implementations for shapes): same numbers as the plain layers, running statistics copied back; a second map
    size recompiles with dynamic shapes, which the fake implementations follow."""
    fused, plain = _block_pair(CL, stride=1)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    for size in (14, 18):
        x = _maps(2, 16, size, size, count=1, layout=CL)[0]
        (out, grad_x, grads), (out_ref, grad_x_ref, grads_ref) = _step(compiled, x), _step(plain, x)
        torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_x, grad_x_ref, rtol=1e-12, atol=1e-11)
        for name, ref in grads_ref.items():  # accumulated over both steps, alike
            torch.testing.assert_close(grads["_orig_mod." + name], ref, rtol=1e-12, atol=1e-11, msg=name)
        for (name, a), (_, b) in zip(fused.named_buffers(), plain.named_buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_self_calibrated_conv2d_through_the_triton_calibration():
    """The drop-in layer (k4 widening the output, stride 2) takes the fused calibration: same step as its
    plain layers."""
    torch.manual_seed(0)
    layer = randomize_(SelfCalibratedConv2d(8, 12, stride=2), seed=3).double().train()
    plain = copy.deepcopy(layer)
    for module in plain.modules():
        if hasattr(module, "fused"):
            module.fused = False
    x = _maps(2, 8, 17, 15, count=1)[0]
    (out, grad_x, grads), (out_ref, grad_x_ref, grads_ref) = _step(layer, x), _step(plain, x)
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_x, grad_x_ref, rtol=1e-12, atol=1e-11)
    for name, ref in grads_ref.items():
        torch.testing.assert_close(grads[name], ref, rtol=1e-12, atol=1e-11, msg=name)


def test_block_saves_no_more_than_the_lean_kernels():
    """The Triton path keeps for backward no more than the lean kernels, which keep less than the plain layers
    (a spatial cross-entropy over the block's output stands in for a network's loss)."""
    fused, plain = _block_pair(CL, stride=1)
    lean = copy.deepcopy(fused)
    lean.triton = lean.scconv.triton = False
    x = _maps(2, 16, 14, 14, count=1, layout=CL)[0]
    labels = torch.zeros(2, 14, 14, dtype=torch.long)
    saved = {name: saved_activation_bytes(m, x, labels) for name, m in (("triton", fused), ("lean", lean))}
    saved["plain"] = saved_activation_bytes(plain, x, labels)
    assert saved["triton"] <= saved["lean"] < saved["plain"], saved
