"""The smallest input a network runs on, found on the meta device (shapes only: no memory, no compute)."""

from __future__ import annotations

import torch
from torch import nn


def _runs(model: nn.Module, size: int, channels: int) -> bool:
    try:
        model(torch.empty(1, channels, size, size, device="meta"))
    except Exception:  # noqa: BLE001 - any failure means this size is too small (a pool with no window, ...)
        return False
    return True


def smallest_input_size(model: nn.Module, limit: int = 2048, channels: int = 3) -> int | None:
    """The smallest side ``s`` of a square ``channels x s x s`` input that ``model`` runs on, or None when it
    does not run at ``limit`` either.

    ``model`` must be on the meta device; it is put in eval mode (batch statistics of one value would fail for
    another reason than size). The search is a bisection, so it assumes that every size above one that runs
    runs too, as it does for convolutional networks whose maps shrink with the input.

    Raises:
        ValueError: ``model`` has parameters off the meta device (a real forward would cost real compute).
    """
    if any(p.device.type != "meta" for p in model.parameters()):
        raise ValueError("smallest_input_size needs a model on the meta device (build it under torch.device('meta'))")
    model.eval()
    with torch.no_grad():
        if not _runs(model, limit, channels):
            return None
        fails, runs = 0, limit
        while runs - fails > 1:
            mid = (fails + runs) // 2
            if _runs(model, mid, channels):
                runs = mid
            else:
                fails = mid
    return runs
