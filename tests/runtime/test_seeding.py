"""cuDNN's autotuning: the one switch that scnet-train (outside train.deterministic) and scnet-bench share."""

from __future__ import annotations

import torch

from scnet.runtime.seeding import use_autotuned_kernels


def test_autotuned_kernels_on_cuda_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    assert use_autotuned_kernels(torch.device("cpu")) is False and torch.backends.cudnn.benchmark is False
    # Setting the flag needs no GPU: a CUDA device object is enough to see what a CUDA run would get.
    assert use_autotuned_kernels(torch.device("cuda")) is True and torch.backends.cudnn.benchmark is True
