"""Training-time kernels of the SC bottleneck that keep fewer activations for the backward pass.

Autograd keeps every intermediate that some backward formula reads. In the SC bottleneck most of them
are cheap to compute again from tensors that are kept anyway, so two ``autograd.Function``\\ s keep
only those and recompute the rest during backward:

- :func:`calibrated_conv`, SCConv's tail ``k4(bn3(y3) * sigmoid(x + up(c)))``: keeps ``x`` (kept anyway by
  the convolutions that read it), ``y3`` (k3's BN input, kept anyway), the low-resolution context ``c``
  and the per-channel BN statistics. It no longer keeps the BN output, the sigmoid and the product,
  three full-resolution tensors.
- :func:`shared_input_conv1x1`, the bottleneck's two 1x1 reductions as one convolution (fused.py): keeps the
  two weights instead of their concatenation, a copy of the weights that every step would hold.
- :func:`bn_relu_cat_conv`, the block's tail ``conv3([avd](relu(cat(bn_a(y_a), bn_b(y_b)))))``: keeps the
  two BN inputs (kept anyway) and no longer keeps the concatenated activation (the block's whole width).

Forward values are those of the layer-by-layer code (the same kernels in the same order). Backward
uses the same ATen backward kernels autograd would call, on recomputed inputs; the BN outputs are
recomputed from the saved batch statistics (``y * scale + shift``), so gradients agree with the
layer-by-layer path within float rounding. Running statistics are updated once, in forward.

Only for training stock ``BatchNorm2d`` layers. Eager autograd runs them as ``autograd.Function`` classes;
``torch.compile`` as the custom ops ``scnet::calibrated_conv`` and ``scnet::bn_relu_cat_conv`` (same arithmetic),
whose forward the compiler cannot see into, so the compiled graph keeps what they keep instead of what its
partitioner would choose (left to itself it keeps the gate and the concatenation: 1.15x ResNet-50's bytes).
The callers fall back to plain modules for TorchScript, FX, ``torch.export`` and evaluation. Under autocast,
the convolution runs in the dtype autocast gave it in forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .aten_ops import (
    autocast_weight,
    bn_backward,
    bn_forward,
    bn_tensors,
    channels_layout,
    conv_backward,
    conv_config,
    conv_input,
    expand_conv,
    expand_conv_backward,
)
from .functional import upsample_like


def _bn_recompute(
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(y - mean) * invstd * weight + bias`` as one pass: ``y * scale + shift`` per channel.

    Computed in the statistics' precision (float32 under autocast) and rounded to ``y``'s dtype, as the BN
    kernel does. With ``out`` (a tensor of ``y``'s shape and dtype, e.g. a slice of a larger one), written there.
    """
    scale = (invstd * weight).view(1, -1, 1, 1)
    shift = (bias - mean * invstd * weight).view(1, -1, 1, 1)
    if out is not None:
        return torch.addcmul(shift, y, scale, out=out)
    return torch.addcmul(shift, y, scale).to(y.dtype)


def _gate(x: torch.Tensor, c: torch.Tensor, identity: bool, upsample: str) -> torch.Tensor:
    """``sigmoid(x + up(c))`` (or ``sigmoid(up(c))``), as SCConv.gate computes it."""
    context = upsample_like(c, x, upsample)  # a new tensor: the sum can go into it (one full-size map fewer)
    if identity:
        return context.add_(x).sigmoid_()
    return context.sigmoid_()


def _upsample_backward(grad: torch.Tensor, c: torch.Tensor, mode: str) -> torch.Tensor:
    """Gradient for ``c`` of ``upsample_like(c, x, mode)`` (``grad`` has ``x``'s size): the ATen kernel autograd
    itself uses for :func:`~scnet.layers.functional.upsample_like`, which resizes to a size (no scale factors)."""
    size = [int(s) for s in grad.shape[-2:]]
    shape = [int(s) for s in c.shape]
    if mode == "nearest":
        return torch.ops.aten.upsample_nearest2d_backward(grad, size, shape, None, None)
    return torch.ops.aten.upsample_bilinear2d_backward(grad, size, shape, False, None, None)


# The kernels' arithmetic, shared by the eager autograd Functions and the compiled custom ops below: what each
# keeps for backward (its inputs and the BN statistics) and how backward recomputes the rest.


def _calibrated_forward(
    x: torch.Tensor,
    y3: torch.Tensor,
    c: torch.Tensor,
    bn_weight: torch.Tensor,
    bn_bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    conv_weight: torch.Tensor,
    momentum: float,
    eps: float,
    identity: bool,
    upsample: str,
    conv: tuple[int, int, int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``conv(bn(y3) * sigmoid(x + up(c)))``, the batch mean and inverse std; ``conv`` is (stride, padding,
    dilation, groups)."""
    stride, padding, dilation, groups = conv
    k3x, mean, invstd = bn_forward(y3, bn_weight, bn_bias, running_mean, running_var, momentum, eps)
    product = k3x.mul_(_gate(x, c, identity, upsample))
    out = F.conv2d(conv_input(product, conv_weight), conv_weight, None, stride, padding, dilation, groups)
    return out, mean, invstd


def _calibrated_backward(
    grad: torch.Tensor,
    saved: tuple[torch.Tensor, ...],
    eps: float,
    identity: bool,
    upsample: str,
    conv: tuple[int, int, int, int],
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients for ``x, y3, c, bn_weight, bn_bias, conv_weight`` (``needs`` says which, in that order) from what
    forward kept: ``saved`` = ``(x, y3, c, bn_weight, bn_bias, conv_weight, mean, invstd)``."""
    x, y3, c, bn_weight, bn_bias, conv_weight, mean, invstd = saved
    k3x = _bn_recompute(y3, bn_weight, bn_bias, mean, invstd)
    gate = _gate(x, c, identity, upsample)
    product = k3x * gate
    grad_product, grad_conv = conv_backward(grad, product, conv_weight, *conv, needs[5])
    # Full-size maps are the step's cost on CPU (each a fresh allocation): the product's buffer takes k3x's
    # gradient, and the sigmoid's gradient goes into the product's where the dtypes allow.
    if torch.promote_types(grad_product.dtype, gate.dtype) == product.dtype:
        grad_k3x = torch.mul(grad_product, gate, out=product)
    else:  # autocast: a bfloat16 gradient and a float32 gate
        grad_k3x = grad_product * gate
    del product
    grad_product.mul_(k3x)
    del k3x
    # d/dz sigmoid(z) = s (1 - s) with the recomputed s, by the kernel autograd itself uses.
    if grad_product.dtype == gate.dtype:
        grad_z = torch.ops.aten.sigmoid_backward.grad_input(grad_product, gate, grad_input=grad_product)
    else:
        grad_z = torch.ops.aten.sigmoid_backward(grad_product, gate)
    del gate, grad_product
    grad_y3, grad_bn_weight, grad_bn_bias = bn_backward(
        grad_k3x, y3, bn_weight, mean, invstd, eps, (needs[1], needs[3], needs[4])
    )
    grad_c = _upsample_backward(grad_z, c, upsample) if needs[2] else None
    grad_x = grad_z if identity and needs[0] else None
    return grad_x, grad_y3, grad_c, grad_bn_weight, grad_bn_bias, grad_conv


def _cat_forward(
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    bn_a: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    bn_b: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    conv_weight: torch.Tensor,
    config: tuple[float, float, float, float, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``conv(avd(relu(cat(bn_a(y_a), bn_b(y_b)))))`` and both BNs' batch means and inverse stds.

    ``bn_a``/``bn_b``: (weight, bias, running_mean, running_var); ``config``: (momentum_a, eps_a, momentum_b,
    eps_b, avd_stride)."""
    momentum_a, eps_a, momentum_b, eps_b, avd_stride = config
    out_a, mean_a, invstd_a = bn_forward(y_a, *bn_a, momentum_a, eps_a)
    out_b, mean_b, invstd_b = bn_forward(y_b, *bn_b, momentum_b, eps_b)
    act = torch.cat([out_a, out_b], dim=1).relu_()
    del out_a, out_b
    return expand_conv(act, conv_weight, avd_stride), mean_a, invstd_a, mean_b, invstd_b


def _cat_backward(
    grad: torch.Tensor,
    saved: tuple[torch.Tensor, ...],
    config: tuple[float, float, float, float, int],
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, ...]:
    """Gradients for ``y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight`` (``needs``, in that order) from
    ``saved`` = ``(y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, mean_a, invstd_a, mean_b, invstd_b)``."""
    y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, mean_a, invstd_a, mean_b, invstd_b = saved
    _, eps_a, _, eps_b, avd_stride = config
    layout = channels_layout(y_a)
    if torch.compiler.is_compiling():
        # Traced by AOTAutograd: a plain concatenation, which the compiler fuses with the recomputation.
        act = torch.cat(
            [
                _bn_recompute(y_a, weight_a, bias_a, mean_a, invstd_a),
                _bn_recompute(y_b, weight_b, bias_b, mean_b, invstd_b),
            ],
            dim=1,
        ).relu_()
    else:
        # Both BN outputs written straight into the concatenation (no second copy); its layout is the inputs'.
        channels = y_a.shape[1]
        shape = (y_a.shape[0], channels + y_b.shape[1], *y_a.shape[2:])
        act = torch.empty(shape, dtype=y_a.dtype, device=y_a.device, memory_format=layout)
        _bn_recompute(y_a, weight_a, bias_a, mean_a, invstd_a, out=act[:, :channels])
        _bn_recompute(y_b, weight_b, bias_b, mean_b, invstd_b, out=act[:, channels:])
        act.relu_()
    grad_act, grad_conv = expand_conv_backward(grad, act, conv_weight, avd_stride, needs[6])
    if grad_act.dtype == act.dtype:  # in place: one full-width map fewer
        grad_act = torch.ops.aten.threshold_backward.grad_input(grad_act, act, 0, grad_input=grad_act)
    else:
        grad_act = torch.ops.aten.threshold_backward(grad_act, act, 0)
    del act
    # Channel slices are strided views, on which BN's backward kernel takes a slow path (measured: 1.7x
    # the time in channels_last); a copy in the BN inputs' layout costs less.
    grad_a, grad_b = (g.contiguous(memory_format=layout) for g in grad_act.split([y_a.shape[1], y_b.shape[1]], 1))
    ga = bn_backward(grad_a, y_a, weight_a, mean_a, invstd_a, eps_a, (needs[0], needs[2], needs[3]))
    gb = bn_backward(grad_b, y_b, weight_b, mean_b, invstd_b, eps_b, (needs[1], needs[4], needs[5]))
    return ga[0], gb[0], ga[1], ga[2], gb[1], gb[2], grad_conv


# Eager training: autograd Functions (cheaper to call than a custom op, and they may keep Python objects).


class _CalibratedConv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,
        y3: torch.Tensor,
        c: torch.Tensor,
        bn_weight: torch.Tensor,
        bn_bias: torch.Tensor,
        conv_weight: torch.Tensor,
        bn: nn.BatchNorm2d,
        identity: bool,
        upsample: str,
        conv: tuple[int, int, int, int],
    ) -> torch.Tensor:
        _, _, running_mean, running_var = bn_tensors(bn)
        momentum, eps = float(bn.momentum), float(bn.eps)  # type: ignore[arg-type]
        out, mean, invstd = _calibrated_forward(
            x,
            y3,
            c,
            bn_weight,
            bn_bias,
            running_mean,
            running_var,
            conv_weight,
            momentum,
            eps,
            identity,
            upsample,
            conv,
        )
        ctx.save_for_backward(x, y3, c, bn_weight, bn_bias, conv_weight, mean, invstd)
        ctx.config = (eps, identity, upsample, conv)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        grads = _calibrated_backward(grad, ctx.saved_tensors, *ctx.config, ctx.needs_input_grad)
        return *grads, None, None, None, None


class _BnReluCatConv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        y_a: torch.Tensor,
        y_b: torch.Tensor,
        weight_a: torch.Tensor,
        bias_a: torch.Tensor,
        weight_b: torch.Tensor,
        bias_b: torch.Tensor,
        conv_weight: torch.Tensor,
        bn_a: nn.BatchNorm2d,
        bn_b: nn.BatchNorm2d,
        avd_stride: int,
    ) -> torch.Tensor:
        config = (float(bn_a.momentum), float(bn_a.eps), float(bn_b.momentum), float(bn_b.eps), avd_stride)  # type: ignore[arg-type]
        stats_a, stats_b = bn_tensors(bn_a)[2:], bn_tensors(bn_b)[2:]
        out, *stats = _cat_forward(
            y_a, y_b, (weight_a, bias_a, *stats_a), (weight_b, bias_b, *stats_b), conv_weight, config
        )
        ctx.save_for_backward(y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, *stats)
        ctx.config = config
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        return *_cat_backward(grad, ctx.saved_tensors, ctx.config, ctx.needs_input_grad), None, None, None


# Compiled training: the same kernels as custom ops, which dynamo and AOTAutograd keep as single nodes. Their
# forward is opaque to the compiler, so the compiled graph saves exactly what setup_context saves; backward is
# traced from the same ATen calls and compiled with the rest. An op with autograd must be functional: it returns
# the updated running statistics (a few hundred floats) and the caller copies them into the BN's buffers.


def _calibrated_conv_impl(
    x: torch.Tensor,
    y3: torch.Tensor,
    c: torch.Tensor,
    bn_weight: torch.Tensor,
    bn_bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    conv_weight: torch.Tensor,
    momentum: float,
    eps: float,
    identity: bool,
    upsample: str,
    conv: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    config = (conv[0], conv[1], conv[2], conv[3])
    stats = running_mean.clone(), running_var.clone()
    with torch.autocast(x.device.type, enabled=False):  # the caller cast conv_weight as autocast would
        out = _calibrated_forward(
            x, y3, c, bn_weight, bn_bias, *stats, conv_weight, momentum, eps, identity, upsample, config
        )
    return *out, *stats


_calibrated_conv_op = torch.library.custom_op("scnet::calibrated_conv", _calibrated_conv_impl, mutates_args=())
# The real arithmetic on fake tensors gives the real shapes, dtypes and strides.
_calibrated_conv_op.register_fake(_calibrated_conv_impl)


def _calibrated_conv_setup(ctx, inputs, output) -> None:
    x, y3, c, bn_weight, bn_bias, _, _, conv_weight, _, eps, identity, upsample, conv = inputs
    _, mean, invstd, *stats = output
    ctx.save_for_backward(x, y3, c, bn_weight, bn_bias, conv_weight, mean, invstd)
    ctx.config = (eps, identity, upsample, tuple(conv))
    ctx.mark_non_differentiable(mean, invstd, *stats)


def _calibrated_conv_backward(ctx, grad, *_grad_stats):
    needs = ctx.needs_input_grad
    grads = _calibrated_backward(grad, ctx.saved_tensors, *ctx.config, (*needs[:5], needs[7]))
    return *grads[:5], None, None, grads[5], None, None, None, None, None


_calibrated_conv_op.register_autograd(_calibrated_conv_backward, setup_context=_calibrated_conv_setup)


def _bn_relu_cat_conv_impl(
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    weight_a: torch.Tensor,
    bias_a: torch.Tensor,
    mean_a: torch.Tensor,
    var_a: torch.Tensor,
    weight_b: torch.Tensor,
    bias_b: torch.Tensor,
    mean_b: torch.Tensor,
    var_b: torch.Tensor,
    conv_weight: torch.Tensor,
    momentum_a: float,
    eps_a: float,
    momentum_b: float,
    eps_b: float,
    avd_stride: int,
) -> tuple[
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
    torch.Tensor,
]:
    config = (momentum_a, eps_a, momentum_b, eps_b, avd_stride)
    stats_a, stats_b = (mean_a.clone(), var_a.clone()), (mean_b.clone(), var_b.clone())
    with torch.autocast(y_a.device.type, enabled=False):  # the caller cast conv_weight as autocast would
        out = _cat_forward(y_a, y_b, (weight_a, bias_a, *stats_a), (weight_b, bias_b, *stats_b), conv_weight, config)
    return *out, *stats_a, *stats_b


_bn_relu_cat_conv_op = torch.library.custom_op("scnet::bn_relu_cat_conv", _bn_relu_cat_conv_impl, mutates_args=())
_bn_relu_cat_conv_op.register_fake(_bn_relu_cat_conv_impl)


def _bn_relu_cat_conv_setup(ctx, inputs, output) -> None:
    y_a, y_b, weight_a, bias_a, _, _, weight_b, bias_b, _, _, conv_weight, *config = inputs
    _, mean_a, invstd_a, mean_b, invstd_b, *stats = output
    ctx.save_for_backward(y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, mean_a, invstd_a, mean_b, invstd_b)
    ctx.config = tuple(config)
    ctx.mark_non_differentiable(*output[1:])


def _bn_relu_cat_conv_backward(ctx, grad, *_grad_stats):
    n = ctx.needs_input_grad
    ga, gb, gwa, gba, gwb, gbb, gconv = _cat_backward(grad, ctx.saved_tensors, ctx.config, (*n[:4], *n[6:8], n[10]))
    return ga, gb, gwa, gba, None, None, gwb, gbb, None, None, gconv, None, None, None, None, None


_bn_relu_cat_conv_op.register_autograd(_bn_relu_cat_conv_backward, setup_context=_bn_relu_cat_conv_setup)


def calibrated_conv(
    x: torch.Tensor,
    y3: torch.Tensor,
    c: torch.Tensor,
    bn: nn.BatchNorm2d,
    conv: nn.Conv2d,
    identity: bool,
    upsample: str,
) -> torch.Tensor:
    """``conv(bn(y3) * sigmoid(x + up(c)))`` in training mode, keeping only ``x``, ``y3`` and ``c`` for backward.

    ``x`` is SCConv's input, ``y3`` its ``k3`` convolution's output (before ``k3``'s BN, ``bn``), ``c`` the
    calibration context ``k2(pool(x))``, ``conv`` the ``k4`` convolution (bias-free). ``bn`` must be a stock
    training-mode ``BatchNorm2d``; its running statistics are updated (``num_batches_tracked`` is the
    caller's). Under ``torch.compile`` it runs as the custom op ``torch.ops.scnet.calibrated_conv``.
    """
    weight, bias, running_mean, running_var = bn_tensors(bn)
    if torch.compiler.is_compiling():
        config = list(conv_config(conv))
        momentum = float(bn.momentum)  # type: ignore[arg-type]
        out, _, _, new_mean, new_var = _calibrated_conv_op(
            x,
            y3,
            c,
            weight,
            bias,
            running_mean,
            running_var,
            autocast_weight(conv.weight),
            momentum,
            bn.eps,
            identity,
            upsample,
            config,
        )
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)
        return out
    return _CalibratedConv.apply(x, y3, c, weight, bias, conv.weight, bn, identity, upsample, conv_config(conv))


def bn_relu_cat_conv(
    y_a: torch.Tensor, y_b: torch.Tensor, bn_a: nn.BatchNorm2d, bn_b: nn.BatchNorm2d, conv: nn.Conv2d, avd_stride: int
) -> torch.Tensor:
    """``conv(avd(relu(cat(bn_a(y_a), bn_b(y_b)))))`` in training mode, keeping only ``y_a`` and ``y_b``.

    ``conv`` is a bias-free 1x1 convolution; ``avd_stride`` > 0 puts the v1d block's 3x3 average pool
    (padding 1, that stride) before it. The BNs must be stock training-mode ``BatchNorm2d`` layers;
    their running statistics are updated (``num_batches_tracked`` is the caller's). Under ``torch.compile`` it
    runs as the custom op ``torch.ops.scnet.bn_relu_cat_conv``.
    """
    if torch.compiler.is_compiling():
        momentum_a, momentum_b = float(bn_a.momentum), float(bn_b.momentum)  # type: ignore[arg-type]
        bns = *bn_tensors(bn_a), *bn_tensors(bn_b)
        out, _, _, _, _, *stats = _bn_relu_cat_conv_op(
            y_a, y_b, *bns, autocast_weight(conv.weight), momentum_a, bn_a.eps, momentum_b, bn_b.eps, avd_stride
        )
        for buffer, new in zip((bns[2], bns[3], bns[6], bns[7]), stats, strict=True):
            buffer.copy_(new)
        return out
    weight_a, bias_a, _, _ = bn_tensors(bn_a)
    weight_b, bias_b, _, _ = bn_tensors(bn_b)
    return _BnReluCatConv.apply(y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv.weight, bn_a, bn_b, avd_stride)


class _SharedInputConv1x1(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, *weights)
        return F.conv2d(x, torch.cat(weights))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, *weights = ctx.saved_tensors
        needs_weight = any(ctx.needs_input_grad[1:])
        grad_x, grad_weight = conv_backward(grad, x, torch.cat(weights), 1, 0, 1, 1, needs_weight)
        if grad_weight is None:
            return grad_x, *([None] * len(weights))
        return grad_x, *grad_weight.split([w.shape[0] for w in weights])


def shared_input_conv1x1(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat([F.conv2d(x, w) for w in weights], 1)`` as one convolution (1x1, stride 1, no bias), like
    :func:`fused.conv1x1_shared_input`, but backward concatenates the weights again instead of keeping the
    concatenation from forward. Under ``torch.compile`` the plain concatenation: the compiler chooses itself whether
    to keep it, and the weights are a fixed amount of memory."""
    if torch.compiler.is_compiling():
        return F.conv2d(x, torch.cat(weights))
    return _SharedInputConv1x1.apply(x, *weights)
