"""A repeatable run: every random source seeded, deterministic kernels on request (else cuDNN's autotuned
ones), and one line for those that have none.

The random draws of a training process: weights init, drop-path and random erasing (torch's CPU/CUDA
generators), random erasing's coin (Python's ``random``), mixup/cutmix (NumPy's global generator, as timm
draws it). Augmentations in the loader are seeded per sample (``scnet.data.transforms.seeded``), and
the loaders keep generators of their own (``scnet.data.loader.private_generator``). Checkpoints save and
restore all three global generators (``scnet.train.checkpoints.rng_state``).
"""

from __future__ import annotations

import os
import random
import re
import sys
import warnings
from collections.abc import Callable

import numpy as np
import torch

# torch's words when an op runs without a deterministic kernel under use_deterministic_algorithms(warn_only=True):
# "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set ..."; cuBLAS
# without a fixed workspace says "... this operation is not deterministic because it uses CuBLAS ...".
_NO_KERNEL = re.compile(r"^(\S+) does not have a deterministic implementation")
_CUBLAS = "because it uses CuBLAS"


def seed_process(seed: int, rank: int = 0) -> None:
    """Seed torch (CPU and CUDA), Python's ``random`` and NumPy's global generator with ``seed + rank``."""
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)  # timm's Mixup draws lambda and the mode from NumPy


def use_deterministic_kernels(device: torch.device) -> None:
    """Ask torch for deterministic kernels (``train.deterministic``); an op without one warns instead of failing
    (see :class:`KernelAlerts`). cuBLAS needs a fixed workspace for it, set before its first use."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def use_autotuned_kernels(device: torch.device) -> bool:
    """On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the fastest
    (``cudnn.benchmark``): the trainer's choice unless ``train.deterministic``, and scnet-bench's, so that a
    benchmark measures the kernels a training run gets. Returns whether it was set (False elsewhere)."""
    if device.type != "cuda":
        return False
    torch.backends.cudnn.benchmark = True
    return True


class KernelAlerts:
    """While active, torch's warnings about ops that have no deterministic kernel are collected instead of
    shown (each would print a paragraph per call site); :meth:`flush` says which ones ran, in one line.

    Other warnings are shown as usual. ``quiet`` (ranks other than 0) collects without saying anything;
    ``say`` prints the line (default: to stderr).
    """

    def __init__(self, say: Callable[[str], None] | None = None, quiet: bool = False) -> None:
        self.say = say or (lambda line: print(line, file=sys.stderr))
        self.quiet = quiet
        self.kernels: list[str] = []
        self._reported = 0
        self._previous = None

    def __enter__(self) -> KernelAlerts:
        self._previous = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc) -> None:
        warnings.showwarning = self._previous

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        found = _NO_KERNEL.match(text)
        name = found.group(1) if found else "cuBLAS (set CUBLAS_WORKSPACE_CONFIG=:4096:8)" if _CUBLAS in text else None
        if name is None:
            self._previous(message, category, filename, lineno, file, line)
        elif name not in self.kernels:
            self.kernels.append(name)

    def flush(self) -> None:
        """One line naming the kernels met since the last flush, if any."""
        new = self.kernels[self._reported :]
        self._reported = len(self.kernels)
        if new and not self.quiet:
            self.say(
                f"scnet-train: warning: train.deterministic: no deterministic kernel for {', '.join(new)} on this "
                "device: the run will not repeat bit for bit"
            )
