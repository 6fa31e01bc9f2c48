"""Which kernels an SC module's forward runs, decided in one place by device and mode.

- ``"plain"``: the layers one by one, as the paper draws them. Evaluation, TorchScript, FX graphs, ``torch.export``,
  custom or frozen norms, ``set_fused(False)``.
- ``"triton"``: training on CUDA with triton installed: the fused Triton kernels of ``triton_ops.py`` (eager, or as
  custom ops under ``torch.compile``).
- ``"lean"``: training anywhere else (CPU; CUDA with ``set_fused(True, triton=False)``): the lean kernels of
  ``lean.py``.

Under ``TRITON_INTERPRET=1`` (set before scnet is imported) Triton runs its kernels on CPU tensors, so CPU
tensors take the Triton path too: that is how the kernels are tested without a GPU.
"""

import importlib.util
import os

import torch
import torch.fx
from torch import nn

from .fused import is_plain_bn

__all__ = ["HAS_TRITON", "INTERPRET", "can_run_lean", "training_kernels"]

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _is_exporting() -> bool:
    # torch.compiler.is_exporting is torch >= 2.6; before it, torch.export traced training graphs with
    # the custom ops in them, which only matters for an exported training-mode model.
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False


def can_run_lean(x: torch.Tensor, bns: list[nn.Module]) -> bool:
    """Whether hand-written training kernels (lean or Triton) may run: autograd in training mode over stock
    BatchNorm2d layers, eager or under ``torch.compile`` (as custom ops). TorchScript, FX and ``torch.export`` get
    the plain layers (an exported program must not need scnet's operators); evaluation saves nothing for backward
    anyway."""
    if not torch.is_grad_enabled() or isinstance(x, torch.fx.Proxy) or _is_exporting():
        return False
    return all(bn.training and is_plain_bn(bn) for bn in bns)


def training_kernels(x: torch.Tensor, fused: bool, triton: bool, bns: list[nn.Module]) -> str:
    """``"plain"``, ``"lean"`` or ``"triton"`` for a module whose flags are ``fused`` and ``triton``
    (``set_fused``) and whose hand-written kernels replace the BNs ``bns``, on input ``x``."""
    if not fused or not can_run_lean(x, bns):
        return "plain"
    if triton and HAS_TRITON and (x.is_cuda or INTERPRET):
        return "triton"
    return "lean"
