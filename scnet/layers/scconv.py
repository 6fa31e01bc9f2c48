"""Self-calibrated convolution (SCConv), the core operator of SCNet (Liu et al., CVPR 2020)."""

# No `from __future__ import annotations`: FX copies forward()'s annotations into the code it generates,
# and TorchScript must be able to read them there (a traced SC model can be scripted).
from collections.abc import Callable

import torch
import torch.fx
from torch import nn

from .dispatch import training_kernels
from .functional import (
    InputTooSmallError,
    check_calibration_options,
    check_feature_size,
    min_feature_size,
    upsample_like,
)
from .fused import is_plain_bn
from .lean import calibrated_conv

__all__ = ["InputTooSmallError", "SCConv", "SelfCalibrated", "conv_bn"]


class SelfCalibrated(nn.Module):
    """Marks a module that is already self-calibrated (SCConv, SelfCalibratedConv2d, the SC bottleneck), so
    that :func:`~scnet.layers.convert_to_sc` leaves it alone without knowing the networks built on it."""


# Shape-dependent code stays a single call in FX graphs (symbolic_trace, torchvision's
# create_feature_extractor, timm's FeatureGraphNet): a Python `if` on a traced size would stop the tracer.
torch.fx.wrap("check_feature_size")
torch.fx.wrap("upsample_like")


def conv_bn(
    in_chs: int,
    out_chs: int,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
) -> nn.Sequential:
    """3x3 convolution followed by BatchNorm (or ``norm_layer(out_chs)``), indexed ``0`` and ``1`` as in the
    original release."""
    return nn.Sequential(
        nn.Conv2d(
            in_chs,
            out_chs,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            groups=groups,
            bias=False,
        ),
        norm_layer(out_chs),
    )


class SCConv(SelfCalibrated):
    """``k4( k3(x) * sigmoid(x + up(k2(pool_r(x)))) )``.

    ``k2`` works in a space ``r`` times smaller, giving each position a view of a wide context
    at almost no cost; the result calibrates ``k3``'s response before ``k4`` (which carries the
    block's stride). The defaults are the published weights' training code: ``r=4`` average
    pooling that floors, ``nearest`` upsampling (the paper's text says bilinear), the identity
    term ``x +`` inside the sigmoid. The other options are the ablation's; none changes the
    parameters or the state_dict.

    Args:
        chs: input and output channels.
        stride: stride of ``k4`` (the block's stride).
        dilation: dilation of the three 3x3 convs.
        groups: groups of the three 3x3 convs.
        pooling_r: down-sampling factor ``r`` of ``k2``'s pool (kernel and stride).
        min_input_size: network input size below which the pool would be empty; only for the error
            message (0 = unknown).
        pool_type: ``"avg"`` or ``"max"`` pooling in ``k2``.
        pool_ceil_mode: round the pooled size up instead of down, so the last window of a map that is not
            a multiple of ``r`` (or a whole map smaller than ``r``) is a partial one over the pixels it
            covers; an average divides by their number.
        calib_identity: ``sigmoid(x + up(...))`` (True) or ``sigmoid(up(...))`` (False).
        upsample: ``"nearest"`` or ``"bilinear"`` (with ``align_corners=False``) up-sampling of ``k2``'s output.
        norm_layer: the normalisation after each conv, called with the channel count (``nn.BatchNorm2d``;
            e.g. torchvision's ``FrozenBatchNorm2d`` for detection). Any other than a training-mode stock
            ``BatchNorm2d`` runs the plain layers (``dispatch.py``).

    Raises:
        ValueError: an option outside its allowed values.
    """

    def __init__(
        self,
        chs: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        pooling_r: int = 4,
        min_input_size: int = 0,
        pool_type: str = "avg",
        pool_ceil_mode: bool = False,
        calib_identity: bool = True,
        upsample: str = "nearest",
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        check_calibration_options(pooling_r, pool_type, pool_ceil_mode, calib_identity, upsample)
        self.pooling_r = pooling_r
        self.min_feature_size = min_feature_size(pooling_r, pool_ceil_mode)
        # Input size of the whole network below which this layer's pool would be empty; only
        # used to make the error message useful.
        self.min_input_size = min_input_size
        self.pool_ceil_mode = pool_ceil_mode  # also in extra_repr: AvgPool2d's own repr leaves ceil_mode out
        self.calib_identity = calib_identity
        self.upsample = upsample
        # With no padding, count_include_pad changes nothing, and floor mode keeps the release's module as it
        # was; in ceil mode False states the intent for the partial windows: average over the pixels covered.
        pool = (
            nn.MaxPool2d(pooling_r, pooling_r, ceil_mode=pool_ceil_mode)
            if pool_type == "max"
            else nn.AvgPool2d(pooling_r, pooling_r, ceil_mode=pool_ceil_mode, count_include_pad=not pool_ceil_mode)
        )
        # The pool is k2's parameter-free index 0, so the state_dict is the same for every option.
        self.k2 = nn.Sequential(pool, *conv_bn(chs, chs, 1, dilation, groups, norm_layer))
        self.k3 = conv_bn(chs, chs, 1, dilation, groups, norm_layer)
        self.k4 = conv_bn(chs, chs, stride, dilation, groups, norm_layer)
        # Train with the lean kernels where they apply (see lean.py); False runs the plain layers.
        self.fused = True
        # On CUDA, the fused Triton calibration (triton_ops.py) where it applies; False keeps the lean kernel.
        self.triton = True

    def extra_repr(self) -> str:
        return (
            f"pooling_r={self.pooling_r}, pool_ceil_mode={self.pool_ceil_mode}, "
            f"calib_identity={self.calib_identity}, upsample={self.upsample!r}"
        )

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The calibration weights ``sigmoid(x + up(k2(pool_r(x))))``, or ``sigmoid(up(...))`` without identity."""
        x = check_feature_size(x, self.pooling_r, self.min_feature_size, self.min_input_size)
        context = upsample_like(self.k2(x), x, self.upsample)
        if self.calib_identity:
            return (x + context).sigmoid_()
        return context.sigmoid_()

    @torch.jit.unused
    def triton_applies(self) -> bool:
        """Whether the fused Triton calibration computes this layer: the release's options (average pooling that
        floors, nearest upsampling, the identity term) over stock BNs, ``k4`` without a bias."""
        pool = self.k2[0]
        return (
            isinstance(pool, nn.AvgPool2d)
            and not self.pool_ceil_mode
            and self.calib_identity
            and self.upsample == "nearest"
            and is_plain_bn(self.k2[2])
            and self.k4[0].bias is None
        )

    @torch.jit.unused
    def calibrated_lean(self, x: torch.Tensor, triton: bool = False) -> torch.Tensor:
        """``k4``'s convolution of ``k3(x) * gate(x)`` (before ``k4``'s BN) by the hand-written kernels, which keep
        neither the gate nor the product for backward: the fused Triton one when ``triton`` and it applies, else the
        lean one. Training mode, stock BNs only."""
        x = check_feature_size(x, self.pooling_r, self.min_feature_size, self.min_input_size)
        y3 = self.k3[0](x)
        bn3 = self.k3[1]
        if triton and self.triton_applies():
            from . import triton_ops  # imports triton: only where it runs

            return triton_ops.calibrate(x, y3, self.k2, bn3, self.k4[0])
        context = self.k2(x)
        assert bn3.num_batches_tracked is not None
        bn3.num_batches_tracked.add_(1)  # the kernel updates the running statistics, nn.BatchNorm2d this
        return calibrated_conv(x, y3, context, bn3, self.k4[0], self.calib_identity, self.upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # TorchScript skips this branch: autograd Functions do not script.
        if not torch.jit.is_scripting():
            kernels = training_kernels(x, self.fused, self.triton, [self.k3[1]])
            if kernels != "plain":
                return self.k4[1](self.calibrated_lean(x, kernels == "triton"))
        return self.k4(self.k3(x) * self.gate(x))
