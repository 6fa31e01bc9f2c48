"""Parameter and multiply-add counts, measured on the models themselves."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, image_size: int = 224) -> int:
    """Multiply-adds of convolutions and linear layers for one image, the convention of the papers.

    Uses PyTorch's ``FlopCounterMode``, which counts 2 FLOPs per multiply-add.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        x = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
