"""The ATen kernels that autograd itself runs, called by hand: shared by the training ops that keep fewer
tensors for backward than autograd would (``lean.py``, ``triton_ops.py``).

Each op there saves its own tensors and writes its own backward; where a step of it is a BatchNorm or a
convolution, it calls the same ATen kernel autograd would, so that its numbers are autograd's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bn_tensors(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stock BN's weight, bias, running mean and running variance."""
    assert bn.weight is not None and bn.bias is not None
    assert bn.running_mean is not None and bn.running_var is not None
    return bn.weight, bn.bias, bn.running_mean, bn.running_var


def conv_config(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """A square convolution's (stride, padding, dilation, groups)."""
    return int(conv.stride[0]), int(conv.padding[0]), int(conv.dilation[0]), conv.groups  # type: ignore[index]


def autocast_weight(weight: torch.Tensor) -> torch.Tensor:
    """A convolution weight in the dtype autocast would run the convolution in (itself outside autocast)."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return weight.to(torch.get_autocast_dtype(device))
    return weight


def conv_input(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The convolution's input in the weight's dtype. Under autocast (eager) the convolution casts both itself;
    the custom ops run with autocast off and get the weight already cast to autocast's dtype."""
    if t.dtype == weight.dtype or torch.is_autocast_enabled(t.device.type):
        return t
    return t.to(weight.dtype)


def channels_layout(y: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last map, else contiguous: the layout new maps beside ``y`` get."""
    return torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def bn_forward(
    y: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BN of ``y``, updating the running statistics once (in place).

    Returns the output and the batch mean and inverse standard deviation that backward needs.
    """
    out, mean, invstd = torch.ops.aten.native_batch_norm(
        y, weight, bias, running_mean, running_var, True, momentum, eps
    )
    # A low-precision input with float32 parameters (autocast) gets float32 statistics from the CPU kernel, but
    # bfloat16 ones from PyTorch's fake kernel, which the compiled custom ops rely on: both made the weight's.
    return out, mean.to(weight.dtype), invstd.to(weight.dtype)


def bn_backward(
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


def conv_backward(
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


def expand_conv(act: torch.Tensor, weight: torch.Tensor, avd_stride: int) -> torch.Tensor:
    """The SC block's ``conv3`` (1x1, bias-free) of ``act``, after the v1d block's 3x3 average pool (padding 1,
    stride ``avd_stride``) when ``avd_stride`` > 0."""
    if avd_stride:
        act = F.avg_pool2d(act, 3, avd_stride, 1)
    return F.conv2d(conv_input(act, weight), weight)


def expand_conv_backward(
    grad: torch.Tensor, act: torch.Tensor, weight: torch.Tensor, avd_stride: int, needs_weight: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`expand_conv` for ``act`` and ``weight``, the pool recomputed from ``act``."""
    pooled = F.avg_pool2d(act, 3, avd_stride, 1) if avd_stride else act
    grad_act, grad_weight = conv_backward(grad, pooled, weight, 1, 0, 1, 1, needs_weight)
    del pooled
    if avd_stride:
        grad_act = torch.ops.aten.avg_pool2d_backward(
            grad_act, act, [3, 3], [avd_stride] * 2, [1, 1], False, True, None
        )
    return grad_act, grad_weight
