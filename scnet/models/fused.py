"""Run sibling conv+BN layers that read the same input as one kernel, keeping their parameters.

SCNet's bottleneck reduces its input twice, with ``conv1_a`` and ``conv1_b`` (each to half the
width). Two half-width 1x1 convolutions use a CPU or GPU worse than one full-width one and read
the input twice, so the block concatenates their weights at run time and runs one convolution
and one batch norm. Gradients flow back to the original parameters through ``torch.cat``; BN
running statistics are written back to each layer. The state_dict is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def is_plain_bn(module: nn.Module) -> bool:
    """True for a stock ``BatchNorm2d`` (not SyncBN, frozen or custom norms), which we can fuse."""
    return type(module) is nn.BatchNorm2d and module.affine and module.track_running_stats


def batch_norm_group(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """``torch.cat([bn(part) for bn, part in zip(bns, x.split(...))], 1)`` in one BN call.

    BN is per channel, so concatenating the layers' parameters along the channel axis is exact.
    In training, the batch statistics update a temporary concatenation of the running buffers,
    which is then copied back into each layer (a few hundred floats).
    """
    first = bns[0]
    weight = torch.cat([bn.weight for bn in bns])
    bias = torch.cat([bn.bias for bn in bns])
    training = first.training
    with torch.no_grad():
        mean = torch.cat([bn.running_mean for bn in bns])
        var = torch.cat([bn.running_var for bn in bns])
    momentum = first.momentum
    if training:
        for bn in bns:
            bn.num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
            momentum = 1.0 / float(first.num_batches_tracked)
    out = F.batch_norm(x, mean, var, weight, bias, training, momentum or 0.0, first.eps)
    if training:
        with torch.no_grad():
            start = 0
            for bn in bns:
                end = start + bn.num_features
                bn.running_mean.copy_(mean[start:end])
                bn.running_var.copy_(var[start:end])
                start = end
    return out


def conv_shared_input(x: torch.Tensor, convs: Sequence[nn.Conv2d]) -> torch.Tensor:
    """``torch.cat([conv(x) for conv in convs], 1)`` as one convolution.

    The convs must share kernel size, stride, padding, dilation and groups, and have no bias.
    """
    c = convs[0]
    weight = torch.cat([conv.weight for conv in convs])
    return F.conv2d(x, weight, None, c.stride, c.padding, c.dilation, c.groups)
