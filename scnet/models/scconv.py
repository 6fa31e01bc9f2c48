"""Self-calibrated convolution (SCConv), the core operator of SCNet (Liu et al., CVPR 2020)."""

# No `from __future__ import annotations`: FX copies forward()'s annotations into the code it generates,
# and TorchScript must be able to read them there (a traced SC model can be scripted).
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn


class InputTooSmallError(ValueError):
    """Raised when an input is too small for SCConv's r=4 average pooling."""


def check_feature_size(x: torch.Tensor, pooling_r: int, min_input_size: int) -> torch.Tensor:
    """Return ``x`` unchanged, or raise :class:`InputTooSmallError` if it cannot hold one ``r x r`` pool window.

    ``min_input_size`` (0 = unknown) is the network input size that would have been enough; it only
    makes the message useful. Returning ``x`` keeps the check in FX graphs (dead-code elimination
    removes calls whose result nobody uses).
    """
    h, w = x.shape[-2], x.shape[-1]
    if h < pooling_r or w < pooling_r:
        hint = f" (network inputs of at least {min_input_size} px)" if min_input_size > 0 else ""
        raise InputTooSmallError(f"SCConv needs a feature map of at least {pooling_r}x{pooling_r}{hint}, got {h}x{w}")
    return x


def upsample_like(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` resized (nearest) to the spatial size of ``x``, as the release does it."""
    return F.interpolate(y, size=x.shape[-2:], mode="nearest")


# Shape-dependent code stays a single call in FX graphs (symbolic_trace, torchvision's
# create_feature_extractor, timm's FeatureGraphNet): a Python `if` on a traced size would stop the tracer.
torch.fx.wrap("check_feature_size")
torch.fx.wrap("upsample_like")


def conv_bn(in_chs: int, out_chs: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    """3x3 convolution followed by BatchNorm, indexed ``0`` and ``1`` as in the original release."""
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
        nn.BatchNorm2d(out_chs),
    )


class SCConv(nn.Module):
    """``k4( k3(x) * sigmoid(x + up(k2(avgpool_r(x)))) )``.

    ``k2`` works in a space ``r`` times smaller, giving each position a view of a wide context
    at almost no cost; the result calibrates ``k3``'s response before ``k4`` (which carries the
    block's stride). Upsampling is ``nearest`` and pooling floors, as in the published weights'
    training code (the paper's text says bilinear).
    """

    def __init__(
        self,
        chs: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        pooling_r: int = 4,
        min_input_size: int = 0,
    ) -> None:
        super().__init__()
        self.pooling_r = pooling_r
        # Input size of the whole network below which this layer's pool would be empty; only
        # used to make the error message useful.
        self.min_input_size = min_input_size
        self.k2 = nn.Sequential(nn.AvgPool2d(pooling_r, pooling_r), *conv_bn(chs, chs, 1, dilation, groups))
        self.k3 = conv_bn(chs, chs, 1, dilation, groups)
        self.k4 = conv_bn(chs, chs, stride, dilation, groups)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The calibration weights ``sigmoid(x + up(k2(avgpool_r(x))))``."""
        x = check_feature_size(x, self.pooling_r, self.min_input_size)
        return (x + upsample_like(self.k2(x), x)).sigmoid_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k4(self.k3(x) * self.gate(x))
