"""Run sibling conv+BN layers that read the same input as one kernel, keeping their parameters.

SCNet's bottleneck reduces its input twice, with ``conv1_a`` and ``conv1_b`` (each to half the
width). Two half-width 1x1 convolutions use a CPU or GPU worse than one full-width one and read
the input twice, so in training the block concatenates their weights at run time and runs one
convolution and one batch norm. Gradients flow back to the original parameters through ``torch.cat``;
BN running statistics are written back to each layer. The state_dict is untouched. In evaluation the
block runs the two layers, as FX graphs do: the wider convolution may sum in another order, and
evaluation outputs must not depend on how the model is run (eager, scripted, traced, exported).

The functions take tensors (not modules), so that TorchScript compiles them as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def is_plain_bn(module: nn.Module) -> bool:
    """True for a stock ``BatchNorm2d`` (not SyncBN, frozen or custom norms) with an exponential average."""
    return (
        type(module) is nn.BatchNorm2d and module.affine and module.track_running_stats and module.momentum is not None
    )


def can_fuse_bns(a: nn.Module, b: nn.Module) -> bool:
    """True when ``a`` and ``b`` can run as one :func:`batch_norm_group`: plain, same eps and momentum."""
    return is_plain_bn(a) and is_plain_bn(b) and a.eps == b.eps and a.momentum == b.momentum


def batch_norm_group(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    running_means: list[torch.Tensor],
    running_vars: list[torch.Tensor],
    training: bool,
    momentum: float,
    eps: float,
) -> torch.Tensor:
    """One BN over the channels of several BNs laid end to end (``x`` holds their channels in order).

    BN is per channel, so concatenating the layers' parameters along the channel axis is exact.
    In training, the batch statistics update a temporary concatenation of the running buffers,
    which is then copied back into each layer's buffers (a few hundred floats).
    """
    mean = torch.cat(running_means)
    var = torch.cat(running_vars)
    out = F.batch_norm(x, mean, var, torch.cat(weights), torch.cat(biases), training, momentum, eps)
    if training:
        start = 0
        for i in range(len(running_means)):  # an index loop: TorchScript has no zip(strict=...)
            end = start + running_means[i].shape[0]
            running_means[i].copy_(mean[start:end])
            running_vars[i].copy_(var[start:end])
            start = end
    return out


def conv1x1_shared_input(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat([F.conv2d(x, w) for w in weights], 1)`` as one convolution (1x1, stride 1, no bias)."""
    return F.conv2d(x, torch.cat(weights))
