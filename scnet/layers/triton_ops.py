"""The SC bottleneck's training step on CUDA: three fused ops built from the Triton kernels and cuDNN's convolutions.

- :func:`reduce_split`: ``relu(bn_a(conv_a(x)))`` and ``relu(bn_b(conv_b(x)))``, the block's two 1x1 reductions,
  as one convolution of twice the width whose output BN-ReLU writes as two separate maps (no strided split for
  the next convolutions to copy, in channels_last as in NCHW); backward writes both halves' BN gradients into
  one map for the one convolution's backward (no concatenation).
- :func:`calibrate`: SCConv's ``k4`` convolution of ``bn3(k3(x)) * sigmoid(x + up(k2(pool_r(x))))``, with ``k2``
  (pool, 3x3 conv, BN) inside, so that the average pool's backward is folded into the calibration's gradient
  for ``x`` (``triton_calibration.py``). The release's options only: average pooling that floors, nearest
  upsampling, the identity term.
- :func:`bn_relu_cat_conv`: the block's tail ``conv3([avd](relu(cat(bn_a(y_a), bn_b(y_b)))))``, BN-ReLU writing
  both halves of the concatenation in place.

Each keeps for backward only what the plain layers keep anyway (convolution inputs, BN inputs, the small maps
of ``k2``, per-channel statistics) and recomputes the rest, as ``lean.py`` does. Forward values are the plain
layers' within one rounding (the fused maps are computed in float32 and rounded once; BN's statistics are
summed in another order); backward uses cuDNN's convolution and ATen's small-map BN kernels as autograd would,
and deterministic Triton reductions for the rest. Running statistics are updated once, in forward.

Eager training runs them as ``autograd.Function``\\ s; ``torch.compile`` as custom ops (``scnet::triton_*``)
whose forward and backward are each one opaque node, so the compiled graph keeps what they keep. The launchers
skip the kernels on fake tensors, so each op's implementation is its own fake one.
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
from .triton_bn import batch_stats, bn_apply
from .triton_bn import bn_backward as triton_bn_backward
from .triton_calibration import calibration_forward, calibration_grads, calibration_sums

Tensors = tuple[torch.Tensor, ...]


def _empty(like: torch.Tensor, channels: int, layout: torch.memory_format) -> torch.Tensor:
    """A new map of ``like``'s batch, size and dtype with ``channels`` channels, in ``layout``."""
    n, _, h, w = like.shape
    return torch.empty((n, channels, h, w), dtype=like.dtype, device=like.device, memory_format=layout)


# ------------------------------------------------------------------------------------------ the 1x1 reductions


def _reduce_forward(
    x: torch.Tensor,
    conv_weights: tuple[torch.Tensor, torch.Tensor],
    bn_a: Tensors,
    bn_b: Tensors,
    config: tuple[float, float, float, float],
) -> Tensors:
    """``(a, b, y, mean_a, invstd_a, mean_b, invstd_b)``: the two ReLU'd BN outputs, the merged convolution's
    output ``y`` (both BNs' inputs, channels laid end to end) and the batch statistics. ``bn_*``: (weight, bias,
    running_mean, running_var), the running statistics updated in place; ``config``: (momentum_a, eps_a,
    momentum_b, eps_b)."""
    momentum_a, eps_a, momentum_b, eps_b = config
    weight = torch.cat(conv_weights)
    y = F.conv2d(conv_input(x, weight), weight)
    half = conv_weights[0].shape[0]
    layout = channels_layout(x)
    outs, stats = [], []
    for y_half, (w, b, running_mean, running_var), momentum, eps in (
        (y[:, :half], bn_a, momentum_a, eps_a),
        (y[:, half:], bn_b, momentum_b, eps_b),
    ):
        mean, invstd = batch_stats(y_half, running_mean, running_var, momentum, eps, w.dtype)
        outs.append(bn_apply(y_half, mean, invstd, w, b, _empty(y_half, y_half.shape[1], layout), relu=True))
        stats += [mean, invstd]
    return outs[0], outs[1], y, *stats


def _reduce_backward(
    grad_a: torch.Tensor, grad_b: torch.Tensor, saved: Tensors, needs: tuple[bool, ...]
) -> tuple[torch.Tensor | None, ...]:
    """Gradients for ``x, conv_a, conv_b, weight_a, bias_a, weight_b, bias_b`` from ``saved`` = ``(x, y, conv_a,
    conv_b, weight_a, bias_a, weight_b, bias_b, mean_a, invstd_a, mean_b, invstd_b)``."""
    x, y, conv_a, conv_b, weight_a, bias_a, weight_b, bias_b, mean_a, invstd_a, mean_b, invstd_b = saved
    half = conv_a.shape[0]
    grad_y = torch.empty_like(y)
    grad_wa, grad_ba = triton_bn_backward(
        grad_a, y[:, :half], mean_a, invstd_a, weight_a, bias_a, True, grad_y[:, :half], y.dtype
    )
    grad_wb, grad_bb = triton_bn_backward(
        grad_b, y[:, half:], mean_b, invstd_b, weight_b, bias_b, True, grad_y[:, half:], y.dtype
    )
    needs_conv = needs[1] or needs[2]
    grad_x, grad_conv = conv_backward(grad_y, x, torch.cat([conv_a, conv_b]), 1, 0, 1, 1, needs_conv)
    grad_conv_a, grad_conv_b = grad_conv.split(half) if grad_conv is not None else (None, None)
    return grad_x, grad_conv_a, grad_conv_b, grad_wa, grad_ba, grad_wb, grad_bb


class _ReduceSplit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, conv_a, conv_b, weight_a, bias_a, weight_b, bias_b, bn_a: nn.BatchNorm2d, bn_b: nn.BatchNorm2d):
        config = (float(bn_a.momentum), float(bn_a.eps), float(bn_b.momentum), float(bn_b.eps))  # type: ignore[arg-type]
        a, b, y, *stats = _reduce_forward(
            x,
            (conv_a, conv_b),
            (weight_a, bias_a, *bn_tensors(bn_a)[2:]),
            (weight_b, bias_b, *bn_tensors(bn_b)[2:]),
            config,
        )
        ctx.save_for_backward(x, y, conv_a, conv_b, weight_a, bias_a, weight_b, bias_b, *stats)
        return a, b

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_a, grad_b):
        return *_reduce_backward(grad_a, grad_b, ctx.saved_tensors, ctx.needs_input_grad), None, None


# --------------------------------------------------------------------------------------------- the calibration


def _calibrate_forward(
    x: torch.Tensor,
    y3: torch.Tensor,
    weights: tuple[torch.Tensor, torch.Tensor],
    bn2: Tensors,
    bn3: Tensors,
    config: tuple,
) -> Tensors:
    """``(out, pooled, t, ctx, mean2, invstd2, mean3, invstd3)``: ``k4``'s output, then what backward needs: the
    pooled map, ``k2``'s convolution output and its BN output (the context), and both BNs' batch statistics.

    ``weights``: (k2's, k4's convolution weights); ``bn2``/``bn3``: (weight, bias, running_mean, running_var) of
    k2's and k3's BN, the running statistics updated in place; ``config``: (pooling_r, k2's conv config, k4's
    conv config, momentum2, eps2, momentum3, eps3)."""
    pooling_r, k2_conv, k4_conv, momentum2, eps2, momentum3, eps3 = config
    k2_weight, k4_weight = weights
    pooled = F.avg_pool2d(x, pooling_r, pooling_r)
    t = F.conv2d(conv_input(pooled, k2_weight), k2_weight, None, *k2_conv)
    ctx, mean2, invstd2 = bn_forward(t, *bn2, momentum2, eps2)
    weight3, bias3, running_mean3, running_var3 = bn3
    mean3, invstd3 = batch_stats(y3, running_mean3, running_var3, momentum3, eps3, weight3.dtype)
    product = calibration_forward(x, y3, ctx, (mean3, invstd3, weight3, bias3), torch.empty_like(x), pooling_r)
    out = F.conv2d(conv_input(product, k4_weight), k4_weight, None, *k4_conv)
    return out, pooled, t, ctx, mean2, invstd2, mean3, invstd3


def _calibrate_backward(grad: torch.Tensor, saved: Tensors, config: tuple, needs: tuple[bool, ...]) -> Tensors:
    """Gradients for ``x, y3, k2_weight, k4_weight, weight2, bias2, weight3, bias3`` (``needs`` says which
    weights, in that order) from ``saved`` = ``(x, y3, pooled, t, ctx, k2_weight, k4_weight, weight2, weight3,
    bias3, mean2, invstd2, mean3, invstd3)``."""
    x, y3, pooled, t, ctx, k2_weight, k4_weight, weight2, weight3, bias3, mean2, invstd2, mean3, invstd3 = saved
    pooling_r, k2_conv, k4_conv, _, eps2, _, _ = config
    bn3 = (mean3, invstd3, weight3, bias3)
    product = calibration_forward(x, y3, ctx, bn3, torch.empty_like(x), pooling_r)
    grad_product, grad_k4 = conv_backward(grad, product, k4_weight, *k4_conv, needs[3])
    del product
    grad_ctx, sum_g, sum_gx = calibration_sums(grad_product, x, y3, ctx, bn3, pooling_r)
    grad_t, grad_weight2, grad_bias2 = bn_backward(grad_ctx, t, weight2, mean2, invstd2, eps2, (True, True, True))
    assert grad_t is not None
    grad_pooled, grad_k2 = conv_backward(grad_t, pooled, k2_weight, *k2_conv, needs[2])
    grad_x, grad_y3 = calibration_grads(grad_product, x, y3, ctx, bn3, (sum_g, sum_gx), grad_pooled, pooling_r)
    grads = (
        grad_x,
        grad_y3,
        grad_k2,
        grad_k4,
        grad_weight2,
        grad_bias2,
        sum_gx.to(weight3.dtype),
        sum_g.to(bias3.dtype),
    )
    return tuple(g if need else None for g, need in zip(grads, needs, strict=True))


class _Calibrate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y3, k2_weight, k4_weight, weight2, bias2, weight3, bias3, modules: tuple, pooling_r: int):
        bn2, bn3, k2, k4 = modules
        config = (
            pooling_r,
            conv_config(k2),
            conv_config(k4),
            float(bn2.momentum),
            float(bn2.eps),
            float(bn3.momentum),
            float(bn3.eps),
        )
        bn2_tensors = (weight2, bias2, *bn_tensors(bn2)[2:])
        bn3_tensors = (weight3, bias3, *bn_tensors(bn3)[2:])
        out, *kept = _calibrate_forward(x, y3, (k2_weight, k4_weight), bn2_tensors, bn3_tensors, config)
        pooled, t, context, mean2, invstd2, mean3, invstd3 = kept
        ctx.save_for_backward(
            x, y3, pooled, t, context, k2_weight, k4_weight, weight2, weight3, bias3, mean2, invstd2, mean3, invstd3
        )
        ctx.config = config
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return *_calibrate_backward(grad, ctx.saved_tensors, ctx.config, ctx.needs_input_grad[:8]), None, None


# --------------------------------------------------------------------------------------------------- the tail


def _cat_act(
    y_a: torch.Tensor, y_b: torch.Tensor, stats: Tensors, bn_a: tuple[torch.Tensor, torch.Tensor], bn_b: tuple
) -> torch.Tensor:
    """``relu(cat(bn_a(y_a), bn_b(y_b)))``, each half written in place; ``stats``: (mean_a, invstd_a, mean_b,
    invstd_b); ``bn_*``: (weight, bias)."""
    half = y_a.shape[1]
    act = _empty(y_a, half + y_b.shape[1], channels_layout(y_a))
    bn_apply(y_a, stats[0], stats[1], *bn_a, act[:, :half], relu=True)
    bn_apply(y_b, stats[2], stats[3], *bn_b, act[:, half:], relu=True)
    return act


def _tail_forward(y_a: torch.Tensor, y_b: torch.Tensor, bn_a: Tensors, bn_b: Tensors, conv_weight, config) -> Tensors:
    """``(out, mean_a, invstd_a, mean_b, invstd_b)``; ``bn_*``: (weight, bias, running_mean, running_var), updated
    in place; ``config``: (momentum_a, eps_a, momentum_b, eps_b, avd_stride)."""
    momentum_a, eps_a, momentum_b, eps_b, avd_stride = config
    stats_a = batch_stats(y_a, bn_a[2], bn_a[3], momentum_a, eps_a, bn_a[0].dtype)
    stats_b = batch_stats(y_b, bn_b[2], bn_b[3], momentum_b, eps_b, bn_b[0].dtype)
    act = _cat_act(y_a, y_b, (*stats_a, *stats_b), bn_a[:2], bn_b[:2])
    return expand_conv(act, conv_weight, avd_stride), *stats_a, *stats_b


def _tail_backward(grad: torch.Tensor, saved: Tensors, config: tuple, needs: tuple[bool, ...]) -> Tensors:
    """Gradients for ``y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight`` from ``saved`` = ``(y_a, y_b,
    weight_a, bias_a, weight_b, bias_b, conv_weight, mean_a, invstd_a, mean_b, invstd_b)``."""
    y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, *stats = saved
    avd_stride = config[4]
    act = _cat_act(y_a, y_b, tuple(stats), (weight_a, bias_a), (weight_b, bias_b))
    grad_act, grad_conv = expand_conv_backward(grad, act, conv_weight, avd_stride, needs[6])
    del act
    half = y_a.shape[1]
    grad_a, grad_b = torch.empty_like(y_a), torch.empty_like(y_b)
    # The ReLU's mask is recomputed from the BN inputs; the halves are read in place from the gradient.
    grad_wa, grad_ba = triton_bn_backward(
        grad_act[:, :half], y_a, stats[0], stats[1], weight_a, bias_a, True, grad_a, y_a.dtype
    )
    grad_wb, grad_bb = triton_bn_backward(
        grad_act[:, half:], y_b, stats[2], stats[3], weight_b, bias_b, True, grad_b, y_b.dtype
    )
    grads = (grad_a, grad_b, grad_wa, grad_ba, grad_wb, grad_bb, grad_conv)
    return tuple(g if need else None for g, need in zip(grads, needs, strict=True))


class _BnReluCatConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, bn_a, bn_b, avd_stride: int):
        config = (float(bn_a.momentum), float(bn_a.eps), float(bn_b.momentum), float(bn_b.eps), avd_stride)
        out, *stats = _tail_forward(
            y_a,
            y_b,
            (weight_a, bias_a, *bn_tensors(bn_a)[2:]),
            (weight_b, bias_b, *bn_tensors(bn_b)[2:]),
            conv_weight,
            config,
        )
        ctx.save_for_backward(y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, *stats)
        ctx.config = config
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return *_tail_backward(grad, ctx.saved_tensors, ctx.config, ctx.needs_input_grad[:7]), None, None, None


# ----------------------------------------------------------------------------------------- compiled training
# The same arithmetic as custom ops, one for each forward and one for each backward: both opaque to the compiler,
# which keeps exactly what setup_context saves. An op with autograd must be functional: it returns the updated
# running statistics (a few hundred floats) and the caller copies them into the BN's buffers. Autocast is off
# inside; the caller passes the convolution weights already cast as autocast would.


def _define(name: str, schema: str, impl) -> torch.library.CustomOpDef:
    op = torch.library.custom_op(f"scnet::{name}", impl, mutates_args=(), schema=schema)
    op.register_fake(impl)  # the launchers skip the kernels on fake tensors: shapes, dtypes and strides are real
    return op


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def _reduce_split_impl(x, conv_a, conv_b, weight_a, bias_a, mean_a, var_a, weight_b, bias_b, mean_b, var_b, config):
    running = mean_a.clone(), var_a.clone(), mean_b.clone(), var_b.clone()
    with _no_autocast(x.device):
        out = _reduce_forward(
            x, (conv_a, conv_b), (weight_a, bias_a, *running[:2]), (weight_b, bias_b, *running[2:]), tuple(config)
        )
    return *out, *running


def _reduce_split_backward_impl(grad_a, grad_b, *saved):
    with _no_autocast(grad_a.device):
        grad_x, grad_conv_a, *rest = _reduce_backward(grad_a, grad_b, saved, (True,) * 7)
    # The two weights' gradients are halves of one tensor; outputs of a custom op must not alias each other.
    return grad_x, grad_conv_a.clone(), *rest


_reduce_split_op = _define(
    "triton_reduce_split",
    "(Tensor x, Tensor conv_a, Tensor conv_b, Tensor weight_a, Tensor bias_a, Tensor running_mean_a, "
    "Tensor running_var_a, Tensor weight_b, Tensor bias_b, Tensor running_mean_b, Tensor running_var_b, "
    "float[] config) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _reduce_split_impl,
)
_reduce_split_backward_op = _define(
    "triton_reduce_split_backward",
    "(Tensor grad_a, Tensor grad_b, Tensor x, Tensor y, Tensor conv_a, Tensor conv_b, Tensor weight_a, "
    "Tensor bias_a, Tensor weight_b, Tensor bias_b, Tensor mean_a, Tensor invstd_a, Tensor mean_b, "
    "Tensor invstd_b) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _reduce_split_backward_impl,
)


def _reduce_split_setup(ctx, inputs, output) -> None:
    x, conv_a, conv_b, weight_a, bias_a, _, _, weight_b, bias_b, _, _, _ = inputs
    ctx.save_for_backward(x, output[2], conv_a, conv_b, weight_a, bias_a, weight_b, bias_b, *output[3:7])
    ctx.mark_non_differentiable(*output[2:])


def _reduce_split_grad(ctx, grad_a, grad_b, *_):
    gx, gca, gcb, gwa, gba, gwb, gbb = _reduce_split_backward_op(grad_a, grad_b, *ctx.saved_tensors)
    return gx, gca, gcb, gwa, gba, None, None, gwb, gbb, None, None, None


_reduce_split_op.register_autograd(_reduce_split_grad, setup_context=_reduce_split_setup)


def _reduce_split_compiled(x, conv_a: torch.Tensor, conv_b: torch.Tensor, bn_a: nn.BatchNorm2d, bn_b: nn.BatchNorm2d):
    tensors_a, tensors_b = bn_tensors(bn_a), bn_tensors(bn_b)
    config = [float(bn_a.momentum), bn_a.eps, float(bn_b.momentum), bn_b.eps]  # type: ignore[arg-type]
    out = _reduce_split_op(x, autocast_weight(conv_a), autocast_weight(conv_b), *tensors_a, *tensors_b, config)
    for buffer, new in zip((*tensors_a[2:], *tensors_b[2:]), out[7:], strict=True):
        buffer.copy_(new)
    return out[0], out[1]


def _calibrate_impl(
    x, y3, k2_weight, k4_weight, weight2, bias2, mean2, var2, weight3, bias3, mean3, var3, ints, floats
):
    running = mean2.clone(), var2.clone(), mean3.clone(), var3.clone()
    config = (ints[0], tuple(ints[1:5]), tuple(ints[5:9]), *floats)
    with _no_autocast(x.device):
        out = _calibrate_forward(
            x, y3, (k2_weight, k4_weight), (weight2, bias2, *running[:2]), (weight3, bias3, *running[2:]), config
        )
    return *out, *running


def _calibrate_backward_impl(grad, x, y3, pooled, t, ctx, k2_weight, k4_weight, weight2, weight3, bias3, *rest):
    *stats, ints, floats = rest
    config = (ints[0], tuple(ints[1:5]), tuple(ints[5:9]), *floats)
    saved = (x, y3, pooled, t, ctx, k2_weight, k4_weight, weight2, weight3, bias3, *stats)
    with _no_autocast(x.device):
        return _calibrate_backward(grad, saved, config, (True,) * 8)


_calibrate_op = _define(
    "triton_calibrate",
    "(Tensor x, Tensor y3, Tensor k2_weight, Tensor k4_weight, Tensor weight2, Tensor bias2, Tensor running_mean2, "
    "Tensor running_var2, Tensor weight3, Tensor bias3, Tensor running_mean3, Tensor running_var3, int[] ints, "
    "float[] floats) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
    "Tensor)",
    _calibrate_impl,
)
_calibrate_backward_op = _define(
    "triton_calibrate_backward",
    "(Tensor grad, Tensor x, Tensor y3, Tensor pooled, Tensor t, Tensor ctx, Tensor k2_weight, Tensor k4_weight, "
    "Tensor weight2, Tensor weight3, Tensor bias3, Tensor mean2, Tensor invstd2, Tensor mean3, Tensor invstd3, "
    "int[] ints, float[] floats) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _calibrate_backward_impl,
)


def _calibrate_setup(ctx, inputs, output) -> None:
    x, y3, k2_weight, k4_weight, weight2, _, _, _, weight3, bias3, _, _, ints, floats = inputs
    pooled, t, context, *stats = output[1:8]
    ctx.save_for_backward(x, y3, pooled, t, context, k2_weight, k4_weight, weight2, weight3, bias3, *stats)
    ctx.config = (list(ints), list(floats))
    ctx.mark_non_differentiable(*output[1:])


def _calibrate_grad(ctx, grad, *_):
    gx, gy3, gk2, gk4, gw2, gb2, gw3, gb3 = _calibrate_backward_op(grad, *ctx.saved_tensors, *ctx.config)
    return gx, gy3, gk2, gk4, gw2, gb2, None, None, gw3, gb3, None, None, None, None


_calibrate_op.register_autograd(_calibrate_grad, setup_context=_calibrate_setup)


def _calibrate_compiled(x, y3, k2_conv: nn.Conv2d, bn2, bn3, k4: nn.Conv2d, pooling_r: int) -> torch.Tensor:
    tensors2, tensors3 = bn_tensors(bn2), bn_tensors(bn3)
    ints = [pooling_r, *conv_config(k2_conv), *conv_config(k4)]
    floats = [float(bn2.momentum), bn2.eps, float(bn3.momentum), bn3.eps]
    weights = autocast_weight(k2_conv.weight), autocast_weight(k4.weight)
    out = _calibrate_op(x, y3, *weights, *tensors2, *tensors3, ints, floats)
    for buffer, new in zip((*tensors2[2:], *tensors3[2:]), out[8:], strict=True):
        buffer.copy_(new)
    return out[0]


def _tail_impl(y_a, y_b, weight_a, bias_a, mean_a, var_a, weight_b, bias_b, mean_b, var_b, conv_weight, config, avd):
    running = mean_a.clone(), var_a.clone(), mean_b.clone(), var_b.clone()
    with _no_autocast(y_a.device):
        out = _tail_forward(
            y_a, y_b, (weight_a, bias_a, *running[:2]), (weight_b, bias_b, *running[2:]), conv_weight, (*config, avd)
        )
    return *out, *running


def _tail_backward_impl(grad, *saved_and_avd):
    *saved, avd = saved_and_avd
    with _no_autocast(grad.device):
        return _tail_backward(grad, tuple(saved), (0.0, 0.0, 0.0, 0.0, avd), (True,) * 7)


_tail_op = _define(
    "triton_bn_relu_cat_conv",
    "(Tensor y_a, Tensor y_b, Tensor weight_a, Tensor bias_a, Tensor running_mean_a, Tensor running_var_a, "
    "Tensor weight_b, Tensor bias_b, Tensor running_mean_b, Tensor running_var_b, Tensor conv_weight, "
    "float[] config, int avd_stride) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _tail_impl,
)
_tail_backward_op = _define(
    "triton_bn_relu_cat_conv_backward",
    "(Tensor grad, Tensor y_a, Tensor y_b, Tensor weight_a, Tensor bias_a, Tensor weight_b, Tensor bias_b, "
    "Tensor conv_weight, Tensor mean_a, Tensor invstd_a, Tensor mean_b, Tensor invstd_b, int avd_stride) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    _tail_backward_impl,
)


def _tail_setup(ctx, inputs, output) -> None:
    y_a, y_b, weight_a, bias_a, _, _, weight_b, bias_b, _, _, conv_weight, _, avd = inputs
    ctx.save_for_backward(y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv_weight, *output[1:5])
    ctx.avd = avd
    ctx.mark_non_differentiable(*output[1:])


def _tail_grad(ctx, grad, *_):
    ga, gb, gwa, gba, gwb, gbb, gconv = _tail_backward_op(grad, *ctx.saved_tensors, ctx.avd)
    return ga, gb, gwa, gba, None, None, gwb, gbb, None, None, gconv, None, None


_tail_op.register_autograd(_tail_grad, setup_context=_tail_setup)


def _bn_relu_cat_conv_compiled(y_a, y_b, bn_a, bn_b, conv: nn.Conv2d, avd_stride: int) -> torch.Tensor:
    tensors_a, tensors_b = bn_tensors(bn_a), bn_tensors(bn_b)
    config = [float(bn_a.momentum), bn_a.eps, float(bn_b.momentum), bn_b.eps]
    out = _tail_op(y_a, y_b, *tensors_a, *tensors_b, autocast_weight(conv.weight), config, avd_stride)
    for buffer, new in zip((*tensors_a[2:], *tensors_b[2:]), out[5:], strict=True):
        buffer.copy_(new)
    return out[0]


# ------------------------------------------------------------------------------------------------ public entry


def reduce_split(
    x: torch.Tensor, conv_a: nn.Conv2d, bn_a: nn.BatchNorm2d, conv_b: nn.Conv2d, bn_b: nn.BatchNorm2d
) -> tuple[torch.Tensor, torch.Tensor]:
    """``relu(bn_a(conv_a(x)))`` and ``relu(bn_b(conv_b(x)))`` in training mode, by one convolution; the 1x1
    convolutions are bias-free, the BNs stock training-mode ``BatchNorm2d`` layers whose running statistics
    and ``num_batches_tracked`` are updated."""
    for bn in (bn_a, bn_b):
        bn.num_batches_tracked.add_(1)
    weight_a, bias_a, _, _ = bn_tensors(bn_a)
    weight_b, bias_b, _, _ = bn_tensors(bn_b)
    if torch.compiler.is_compiling():
        return _reduce_split_compiled(x, conv_a.weight, conv_b.weight, bn_a, bn_b)
    return _ReduceSplit.apply(x, conv_a.weight, conv_b.weight, weight_a, bias_a, weight_b, bias_b, bn_a, bn_b)


def calibrate(
    x: torch.Tensor,
    y3: torch.Tensor,
    k2: nn.Sequential,
    bn3: nn.BatchNorm2d,
    k4: nn.Conv2d,
) -> torch.Tensor:
    """``k4(bn3(y3) * sigmoid(x + up(k2(x))))`` in training mode, before ``k4``'s BN: SCConv's calibration with the
    release's options (``k2`` = (AvgPool2d(r, r) flooring, Conv2d, BatchNorm2d), nearest upsampling, the identity
    term). ``y3`` is ``k3``'s convolution output. The BNs' running statistics and ``num_batches_tracked`` are
    updated."""
    pool, k2_conv, bn2 = k2[0], k2[1], k2[2]
    for bn in (bn2, bn3):
        bn.num_batches_tracked.add_(1)
    pooling_r = int(pool.kernel_size)
    weight2, bias2, _, _ = bn_tensors(bn2)
    weight3, bias3, _, _ = bn_tensors(bn3)
    if torch.compiler.is_compiling():
        return _calibrate_compiled(x, y3, k2_conv, bn2, bn3, k4, pooling_r)
    return _Calibrate.apply(
        x, y3, k2_conv.weight, k4.weight, weight2, bias2, weight3, bias3, (bn2, bn3, k2_conv, k4), pooling_r
    )


def bn_relu_cat_conv(
    y_a: torch.Tensor, y_b: torch.Tensor, bn_a: nn.BatchNorm2d, bn_b: nn.BatchNorm2d, conv: nn.Conv2d, avd_stride: int
) -> torch.Tensor:
    """``conv(avd(relu(cat(bn_a(y_a), bn_b(y_b)))))`` in training mode, as :func:`lean.bn_relu_cat_conv` (same
    arguments, same updates of the BNs' running statistics and ``num_batches_tracked``) with the Triton kernels."""
    for bn in (bn_a, bn_b):
        bn.num_batches_tracked.add_(1)
    weight_a, bias_a, _, _ = bn_tensors(bn_a)
    weight_b, bias_b, _, _ = bn_tensors(bn_b)
    if torch.compiler.is_compiling():
        return _bn_relu_cat_conv_compiled(y_a, y_b, bn_a, bn_b, conv, avd_stride)
    return _BnReluCatConv.apply(y_a, y_b, weight_a, bias_a, weight_b, bias_b, conv.weight, bn_a, bn_b, avd_stride)
