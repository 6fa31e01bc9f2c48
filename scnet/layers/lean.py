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

Only for eager training of stock ``BatchNorm2d`` layers; the callers fall back to plain modules for
TorchScript, FX, ``torch.compile`` (whose partitioner makes the same recompute choices by itself) and
evaluation. Under autocast, the convolution runs in the dtype autocast gave it in forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .functional import upsample_like


def _bn_forward(y: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BN of ``y`` with ``bn``'s parameters, updating its running statistics once.

    Returns the output and the batch mean and inverse standard deviation that backward needs.
    """
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        y, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, float(bn.momentum), bn.eps
    )
    return out, mean, invstd


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


def _bn_backward(
    grad: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    eps: float,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of a training-mode BN for its input, weight and bias: the kernel autograd itself uses."""
    gy, gw, gb = torch.ops.aten.native_batch_norm_backward(
        grad, y, weight, None, None, mean, invstd, True, eps, list(needs)
    )
    return (gy if needs[0] else None), (gw if needs[1] else None), (gb if needs[2] else None)


def _gate(x: torch.Tensor, c: torch.Tensor, identity: bool, upsample: str) -> torch.Tensor:
    """``sigmoid(x + up(c))`` (or ``sigmoid(up(c))``), as SCConv.gate computes it."""
    context = upsample_like(c, x, upsample)
    if identity:
        return (x + context).sigmoid_()
    return context.sigmoid_()


def _conv_backward(
    grad: torch.Tensor,
    inp: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    padding: int,
    dilation: int,
    groups: int,
    needs_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input and weight gradients of a bias-free conv2d. Both operands are cast to the gradient's dtype:
    under autocast, forward ran the convolution in that dtype."""
    dtype = grad.dtype
    gi, gw, _ = torch.ops.aten.convolution_backward(
        grad,
        inp.to(dtype),
        weight.to(dtype),
        None,
        [stride, stride],
        [padding, padding],
        [dilation, dilation],
        False,
        [0, 0],
        groups,
        [True, needs_weight, False],
    )
    return gi, (gw.to(weight.dtype) if needs_weight else None)


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
        stride: int,
        padding: int,
        dilation: int,
        groups: int,
    ) -> torch.Tensor:
        k3x, mean, invstd = _bn_forward(y3, bn)
        product = k3x.mul_(_gate(x, c, identity, upsample))
        out = F.conv2d(product, conv_weight, None, stride, padding, dilation, groups)
        ctx.save_for_backward(x, y3, c, bn_weight, bn_bias, conv_weight, mean, invstd)
        ctx.config = (bn.eps, identity, upsample, stride, padding, dilation, groups)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, y3, c, bn_weight, bn_bias, conv_weight, mean, invstd = ctx.saved_tensors
        eps, identity, upsample, stride, padding, dilation, groups = ctx.config
        needs = ctx.needs_input_grad
        k3x = _bn_recompute(y3, bn_weight, bn_bias, mean, invstd)
        gate = _gate(x, c, identity, upsample)
        grad_product, grad_conv = _conv_backward(
            grad, k3x * gate, conv_weight, stride, padding, dilation, groups, needs[5]
        )
        grad_k3x = grad_product * gate
        # d/dz sigmoid(z) = s (1 - s) with the recomputed s, by the kernel autograd itself uses.
        grad_z = torch.ops.aten.sigmoid_backward(grad_product.mul_(k3x), gate)
        del k3x, gate, grad_product
        grad_y3, grad_bn_weight, grad_bn_bias = _bn_backward(
            grad_k3x, y3, bn_weight, mean, invstd, eps, (needs[1], needs[3], needs[4])
        )
        grad_c = None
        if needs[2]:
            with torch.enable_grad():  # the upsampling's own backward, for either mode
                c_ = c.detach().requires_grad_()
                (grad_c,) = torch.autograd.grad(upsample_like(c_, x, upsample), c_, grad_z)
        grad_x = grad_z if identity and needs[0] else None
        return grad_x, grad_y3, grad_c, grad_bn_weight, grad_bn_bias, grad_conv, *([None] * 7)


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
    caller's).
    """
    return _CalibratedConv.apply(
        x,
        y3,
        c,
        bn.weight,
        bn.bias,
        conv.weight,
        bn,
        identity,
        upsample,
        conv.stride[0],
        conv.padding[0],
        conv.dilation[0],
        conv.groups,
    )


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
        out_a, mean_a, invstd_a = _bn_forward(y_a, bn_a)
        out_b, mean_b, invstd_b = _bn_forward(y_b, bn_b)
        act = torch.cat([out_a, out_b], dim=1).relu_()
        del out_a, out_b
        if avd_stride:
            act = F.avg_pool2d(act, 3, avd_stride, 1)
        out = F.conv2d(act, conv_weight)
        ctx.save_for_backward(
            y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, mean_a, invstd_a, mean_b, invstd_b
        )
        ctx.config = (bn_a.eps, bn_b.eps, avd_stride)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, mean_a, invstd_a, mean_b, invstd_b = (
            ctx.saved_tensors
        )
        eps_a, eps_b, avd_stride = ctx.config
        needs = ctx.needs_input_grad
        # Both BN outputs written straight into the concatenation (no second copy); its layout is the inputs'.
        channels = y_a.shape[1]
        layout = (
            torch.channels_last if y_a.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        )
        shape = (y_a.shape[0], channels + y_b.shape[1], *y_a.shape[2:])
        act = torch.empty(shape, dtype=y_a.dtype, device=y_a.device, memory_format=layout)
        _bn_recompute(y_a, weight_a, bias_a, mean_a, invstd_a, out=act[:, :channels])
        _bn_recompute(y_b, weight_b, bias_b, mean_b, invstd_b, out=act[:, channels:])
        act.relu_()
        pooled = F.avg_pool2d(act, 3, avd_stride, 1) if avd_stride else act
        grad_act, grad_conv = _conv_backward(grad, pooled, conv_weight, 1, 0, 1, 1, needs[6])
        del pooled
        if avd_stride:
            grad_act = torch.ops.aten.avg_pool2d_backward(
                grad_act, act, [3, 3], [avd_stride] * 2, [1, 1], False, True, None
            )
        grad_act = torch.ops.aten.threshold_backward(grad_act, act, 0)
        del act
        # Channel slices are strided views, on which BN's backward kernel takes a slow path (measured: 1.7x
        # the time in channels_last); a copy in the BN inputs' layout costs less.
        layout = (
            torch.channels_last if y_a.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        )
        grad_a, grad_b = (g.contiguous(memory_format=layout) for g in grad_act.split([y_a.shape[1], y_b.shape[1]], 1))
        ga = _bn_backward(grad_a, y_a, weight_a, mean_a, invstd_a, eps_a, (needs[0], needs[2], needs[3]))
        gb = _bn_backward(grad_b, y_b, weight_b, mean_b, invstd_b, eps_b, (needs[1], needs[4], needs[5]))
        return ga[0], gb[0], ga[1], ga[2], gb[1], gb[2], grad_conv, None, None, None


def bn_relu_cat_conv(
    y_a: torch.Tensor, y_b: torch.Tensor, bn_a: nn.BatchNorm2d, bn_b: nn.BatchNorm2d, conv: nn.Conv2d, avd_stride: int
) -> torch.Tensor:
    """``conv(avd(relu(cat(bn_a(y_a), bn_b(y_b)))))`` in training mode, keeping only ``y_a`` and ``y_b``.

    ``conv`` is a bias-free 1x1 convolution; ``avd_stride`` > 0 puts the v1d block's 3x3 average pool
    (padding 1, that stride) before it. The BNs must be stock training-mode ``BatchNorm2d`` layers;
    their running statistics are updated (``num_batches_tracked`` is the caller's).
    """
    return _BnReluCatConv.apply(
        y_a, y_b, bn_a.weight, bn_a.bias, bn_b.weight, bn_b.bias, conv.weight, bn_a, bn_b, avd_stride
    )


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
        grad_x, grad_weight = _conv_backward(grad, x, torch.cat(weights), 1, 0, 1, 1, needs_weight)
        if grad_weight is None:
            return grad_x, *([None] * len(weights))
        return grad_x, *grad_weight.split([w.shape[0] for w in weights])


def shared_input_conv1x1(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat([F.conv2d(x, w) for w in weights], 1)`` as one convolution (1x1, stride 1, no bias), like
    :func:`fused.conv1x1_shared_input`, but backward concatenates the weights again instead of keeping the
    concatenation from forward."""
    return _SharedInputConv1x1.apply(x, *weights)
