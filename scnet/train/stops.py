"""Why a run stops early, and how every rank agrees on it: a signal (SIGTERM/SIGINT: checkpoint and exit
cleanly) or a non-finite loss (skip up to ``train.skip_nonfinite`` steps, else stop with one line)."""

from __future__ import annotations

import signal
import sys

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..runtime.distributed import DistInfo
from .errors import NonFiniteLossError


class Preempted:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signum = signum

    def agreed(self, info: DistInfo, check_now: bool) -> bool:
        """Whether the run stops after this step, the same answer on every rank.

        Several processes agree through an all_reduce, every ``check_now`` step only (log points and the
        epoch's end), to keep a collective out of most steps; a single process checks its flag every step.
        """
        stopping = self.signum is not None
        if info.world_size == 1:
            return stopping
        if not check_now:
            return False
        flag = torch.tensor(int(stopping), device=info.device)
        dist.all_reduce(flag)
        return bool(flag.item())

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for s, handler in self._old.items():
            signal.signal(s, handler)


class NonFiniteGuard:
    """Keeps a NaN/inf loss from reaching the weights: the step is undone (gradients and the BN statistics its
    forward moved), up to ``allowed`` times in this process's run (a fresh allowance after a resume)."""

    def __init__(self, model: nn.Module, allowed: int, info: DistInfo) -> None:
        self.model, self.allowed, self.info = model, allowed, info
        self.total = 0
        self._buffers: list[torch.Tensor] | None = None

    def before_step(self) -> None:
        """Only when skipping is allowed: keep the BN statistics a skipped step must put back."""
        self._buffers = [b.clone() for b in self.model.buffers()] if self.allowed else None

    def is_bad(self, step_loss: torch.Tensor) -> bool:
        """Whether this step's loss is not finite on any rank (one host sync; with several processes one tiny
        all_reduce, so that every rank skips or stops at the same step)."""
        bad = (~torch.isfinite(step_loss)).float()
        if self.info.world_size > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item())

    def skip(self, optimizer: torch.optim.Optimizer, where: str, kept: str, bar: tqdm) -> None:
        """Undo the step, or raise :class:`NonFiniteLossError` when the allowance is used up."""
        self.total += 1
        if self.total > self.allowed:
            bar.close()
            allowed = (
                f"more than train.skip_nonfinite={self.allowed} such steps"
                if self.allowed
                else "set train.skip_nonfinite=N to skip up to N such steps"
            )
            raise NonFiniteLossError(f"non-finite training loss at {where}; {kept}; {allowed}")
        optimizer.zero_grad(set_to_none=True)
        for b, before in zip(self.model.buffers(), self._buffers, strict=True):
            b.copy_(before)
        if self.info.is_main:
            tqdm.write(f"skipped a non-finite training loss at {where}", file=sys.stderr)
