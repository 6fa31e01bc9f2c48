"""What a training run is made of, and where it stands: every object a checkpoint saves, in one place.

A checkpoint (rank 0's file) holds exactly: model, optimizer, scheduler, scaler, epoch, step_in_epoch,
global_step, best_top1, rng (one entry per rank), config, classes; model_ema with EMA; mid-epoch,
epoch_so_far (each rank's sums over the epoch's steps) and, on shards, shard_positions (each rank's loader
workers); at an epoch's end, metrics.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from ..data.loader import ReplacedLog


def rng_state() -> dict[str, Any]:
    """The process's RNG states (torch CPU and CUDA, Python, NumPy)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # timm's mixup draws from numpy
    state = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": [keys.tolist(), pos, has_gauss, gauss],  # plain types: loadable with weights_only=True
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Where the run stands; saved under the checkpoint keys of the same names."""

    epoch: int = 0  # epochs finished: the epoch the run (re)starts in
    step_in_epoch: int = 0  # optimizer steps of that epoch already done (a mid-epoch checkpoint)
    global_step: int = 0
    best_top1: float = -1.0


@dataclass
class ResumePoint:
    """This rank's part of a mid-epoch checkpoint: used for the first epoch of a resumed run only."""

    so_far: dict[str, Any] | None = None  # the epoch's sums before the checkpoint (EpochTally.so_far)
    shard_position: dict[str, Any] | None = None  # how far this rank's loader workers had read (shards)


@dataclass
class EpochTally:
    """This rank's sums over the current epoch: the epoch's metrics line and, mid-epoch, checkpoints."""

    loss_sum: torch.Tensor  # summed on the device, read at log time only
    loss_seen: int = 0  # images of the steps whose loss was finite
    nonfinite: int = 0
    replaced: ReplacedLog = field(default_factory=ReplacedLog)
    # data.decode=gpu: files decoded on the CPU all the same, and files no decoder could read (left out)
    decoded_on_cpu: ReplacedLog = field(default_factory=lambda: ReplacedLog("files decoded on the CPU"))
    broken: ReplacedLog = field(default_factory=lambda: ReplacedLog("unreadable samples left out of their batch"))
    seen: int = 0  # images of every step, for the speed figures (never saved)
    wait: float = 0.0  # seconds waiting for data (never saved)
    t0: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, device: torch.device, so_far: dict[str, Any] | None = None) -> EpochTally:
        """A new epoch's tally; ``so_far`` continues a checkpoint's sums (resumed mid-epoch)."""
        tally = cls(loss_sum=torch.zeros((), device=device))
        if so_far is not None:
            tally.loss_sum.fill_(so_far["loss_sum"])  # float32 -> float -> float32: exact
            tally.loss_seen, tally.nonfinite = so_far["loss_seen"], so_far["nonfinite"]
            tally.replaced.update(so_far["replaced"])
            tally.decoded_on_cpu.update(so_far.get("decoded_on_cpu", []))  # absent from older checkpoints
            tally.broken.update(so_far.get("broken", []))
        return tally

    def so_far(self) -> dict[str, Any]:
        """The sums a mid-epoch checkpoint keeps, so that the resumed epoch reports what this one would."""
        return {
            "loss_sum": self.loss_sum.item(),
            "loss_seen": self.loss_seen,
            "nonfinite": self.nonfinite,
            "replaced": list(self.replaced.names),
            "decoded_on_cpu": list(self.decoded_on_cpu.names),
            "broken": list(self.broken.names),
        }

    def mean_loss(self) -> float:
        return self.loss_sum.item() / max(self.loss_seen, 1)


@dataclass
class TrainState:
    """Every object the steps use and a checkpoint saves, built in :func:`~scnet.train.setup.build_state`."""

    model: nn.Module  # the module whose state_dict is saved
    net: nn.Module  # what the step calls: model, or its DDP wrapper, compiled when asked
    ddp: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's scheduler: step_update per optimizer step, step per epoch
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    mixup: Any  # timm's Mixup, or None
    criterion: nn.Module
    classes: list[str]
    progress: Progress = field(default_factory=Progress)

    def lr(self) -> float:
        """The learning rate the schedule set at the last step (applied or skipped)."""
        return self.optimizer.param_groups[0]["lr"]

    def file_dict(
        self,
        config: dict[str, Any],
        epoch: int,
        step: int,
        ranks: list[tuple[dict, dict | None, dict | None]],
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Rank 0's checkpoint file at ``epoch`` (finished) and ``step`` (of the next; 0 at an epoch's end);
        ``ranks`` holds each rank's (RNG state, shard position, epoch sums so far)."""
        rngs, positions, sums = (list(column) for column in zip(*ranks, strict=True))
        p = self.progress
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "step_in_epoch": step,
            "global_step": p.global_step,
            "best_top1": p.best_top1,
            "rng": rngs,
            "config": config,
            "classes": self.classes,  # index -> class name: scnet-eval labels any val split by it
            **(extra or {}),
        }
        if positions[0] is not None:
            state["shard_positions"] = positions
        if sums[0] is not None:
            state["epoch_so_far"] = sums
        if self.ema is not None:
            state["model_ema"] = self.ema.module.state_dict()
        return state

    def load(self, saved: dict[str, Any], rank: int) -> ResumePoint:
        """Restore everything ``saved`` holds, this rank's RNG last; returns this rank's mid-epoch part."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and "model_ema" in saved:
            self.ema.module.load_state_dict(saved["model_ema"])
        self.progress = Progress(saved["epoch"], saved["step_in_epoch"], saved["global_step"], saved["best_top1"])
        set_rng_state(saved["rng"][rank] if rank < len(saved["rng"]) else saved["rng"][0])
        point = ResumePoint()
        if self.progress.step_in_epoch > 0 and rank < len(saved.get("shard_positions") or []):
            point.shard_position = saved["shard_positions"][rank]
        if self.progress.step_in_epoch > 0 and rank < len(saved.get("epoch_so_far") or []):
            point.so_far = saved["epoch_so_far"][rank]
        return point
