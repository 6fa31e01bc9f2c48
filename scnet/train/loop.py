"""One epoch of training and its end: the steps (micro-batches, accumulation, autocast, the non-finite guard,
clipping, the optimizer and EMA updates), then the schedule, validation and the epoch's metrics."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..inference.accuracy import evaluate
from ..runtime import faults
from ..runtime.distributed import DistInfo
from ..runtime.precision import autocast
from ..runtime.seeding import KernelAlerts
from .log import RunLog
from .manager import CheckpointManager
from .output import LAST, OutputDir
from .setup import TrainData
from .state import EpochTally, ResumePoint, TrainState
from .stops import NonFiniteGuard, Preempted


@dataclass
class Loop:
    """The run's epochs over ``state``: everything one step and one epoch's end use."""

    cfg: Config
    info: DistInfo
    state: TrainState
    data: TrainData
    checkpoints: CheckpointManager
    guard: NonFiniteGuard
    preempt: Preempted
    alerts: KernelAlerts
    log: RunLog
    out: OutputDir

    def train_epoch(self, epoch: int, resume: ResumePoint | None) -> tuple[EpochTally, dict[str, Any] | None]:
        """Train ``epoch`` from the progress's step on; returns its tally, and what stopped it (a signal)."""
        state, stream, p = self.state, self.data.stream, self.state.progress
        stream.start_epoch(epoch, p.step_in_epoch, resume.shard_position if resume else None)
        state.net.train()
        tally = EpochTally.start(self.info.device, resume.so_far if resume else None)
        bar = self.log.start_epoch(epoch, stream.steps_per_epoch, p.step_in_epoch)
        batches = stream.batches()
        step = p.step_in_epoch
        while step < stream.steps_per_epoch:
            self.guard.before_step()
            step_loss, step_images = self._forward_backward(batches, tally)
            tally.seen += step_images
            faults.point("step")
            step += 1
            if self.guard.is_bad(step_loss):
                tally.nonfinite += 1
                where = f"epoch {epoch + 1} step {step} (global step {p.global_step + 1})"
                self.guard.skip(state.optimizer, where, self.out.kept("last good checkpoint"), bar)
                p.global_step += 1
                state.scheduler.step_update(num_updates=p.global_step)
                bar.update(1)
                continue
            tally.loss_sum += step_loss
            tally.loss_seen += step_images
            self._update()
            bar.update(1)
            log_point = p.global_step % self.cfg.train.log_every == 0 or step == stream.steps_per_epoch
            if log_point:
                self.log.step(tally, state.lr(), p.global_step)
            stopping = self.preempt.agreed(self.info, log_point)
            if stopping or self.checkpoints.due(p.global_step, step, stream.steps_per_epoch):
                self.checkpoints.save(LAST, state, epoch, step, tally, stream)
            if stopping:
                bar.close()
                self.log.say(f"stopped by signal at epoch {epoch + 1} step {step}; checkpoint {self.out.last}")
                return tally, {"preempted": True, "epoch": epoch, "step": step}
        bar.close()
        p.step_in_epoch = 0
        return tally, None

    def _forward_backward(self, batches, tally: EpochTally) -> tuple[torch.Tensor, int]:
        """The step's micro-batches, forward and backward (gradients summed); their summed loss and images."""
        state, accum = self.state, self.cfg.train.accum_steps
        step_loss = torch.zeros((), device=self.info.device)
        step_images = 0
        for micro in range(accum):
            tw = time.perf_counter()
            faults.point("data")
            batch = next(batches)
            tally.wait += time.perf_counter() - tw
            self.data.stream.consumed(batch)
            tally.replaced.update(batch.replaced)
            tally.decoded_on_cpu.update(batch.decoded_on_cpu)
            tally.broken.update(batch.broken)
            images, labels = batch.images, batch.labels
            if images.shape[0] == 0:
                continue  # every sample of this micro-batch was unreadable (data.decode=gpu, left out)
            if state.mixup is not None:
                images, labels = state.mixup(images, labels)
            # DDP all-reduces the gradients on the last micro-batch only.
            sync = state.ddp.no_sync() if state.ddp is not None and micro < accum - 1 else nullcontext()
            with sync, autocast(self.info.device.type, self.cfg.train.amp):
                loss = state.criterion(state.net(images), labels) / accum
            state.scaler.scale(loss).backward()
            step_loss += loss.detach().float() * accum * images.shape[0]
            step_images += images.shape[0]
        return step_loss, step_images

    def _update(self) -> None:
        """Clip, step the optimizer (through the scaler), then the schedule and the EMA."""
        state, p = self.state, self.state.progress
        if self.cfg.optim.clip_grad:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), self.cfg.optim.clip_grad)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        self.alerts.flush()
        state.optimizer.zero_grad(set_to_none=True)
        p.global_step += 1
        state.scheduler.step_update(num_updates=p.global_step)
        if state.ema is not None:
            state.ema.update(state.model, step=p.global_step)

    def end_epoch(self, epoch: int, tally: EpochTally) -> tuple[dict[str, Any], bool, list[str]]:
        """The schedule's epoch step, the epoch's metrics and, when due, validation (and of the EMA weights).
        Returns the metrics, whether they are the best so far, and the validation files that were skipped."""
        state, info, cfg = self.state, self.info, self.cfg
        # The schedule's lr at the epoch's last step, applied or skipped as non-finite: defined even when
        # every step of a (resumed) epoch was skipped, and the same for a resumed and an uninterrupted run.
        lr = state.lr()
        state.scheduler.step(epoch + 1)
        epoch_time = time.perf_counter() - tally.t0
        metrics = {
            "epoch": epoch + 1,
            "train_loss": tally.mean_loss(),
            "lr": lr,
            "epoch_time": epoch_time,
            "images_per_second": tally.seen * info.world_size / epoch_time,
            "data_wait": tally.wait / epoch_time,
            "replaced": len(tally.replaced.names),
            "nonfinite_steps": tally.nonfinite,
            **(
                {"decoded_on_cpu": len(tally.decoded_on_cpu.names), "left_out": len(tally.broken.names)}
                if self.data.decode == "gpu"
                else {}
            ),
            # What the epoch ran on: device-hours of a run = sum(epoch_time) * world_size.
            "world_size": info.world_size,
            "device": info.device.type,
        }
        skipped: list[str] = []
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
            val = self._evaluate(state.model)
            metrics.update(top1=val["top1"], top5=val["top5"], val_images=val["images"])
            metrics.update(val_skipped=len(val["skipped"]))
            skipped = val["skipped"]
            if state.ema is not None:
                val_ema = self._evaluate(state.ema.module)
                metrics.update(ema_top1=val_ema["top1"], ema_top5=val_ema["top5"])
        is_best = metrics.get("top1", -1.0) > state.progress.best_top1
        if is_best:
            state.progress.best_top1 = metrics["top1"]
        return metrics, is_best, skipped

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        return evaluate(
            model, self.data.val_loader, self.info.device, self.cfg.train.amp, preprocess=self.data.eval_preprocess
        )
