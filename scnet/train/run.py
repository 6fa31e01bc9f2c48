"""A training run: named stages over one TrainState, in the order a bit-exact resume depends on.

Read this page first. Seeds come before anything draws a random number; the data before the model; the
checkpoint is restored after every object it restores exists (this rank's RNG last); the signal handler is
installed only once setup is done. Distributed setup comes from torchrun's environment
(:mod:`scnet.runtime.distributed`).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from ..config import Config
from ..runtime import faults
from ..runtime.distributed import DistInfo, cleanup_distributed, peer_lost, setup_distributed
from ..runtime.seeding import KernelAlerts
from .log import RunLog
from .loop import Loop
from .manager import CheckpointManager
from .output import BEST, LAST, OutputDir
from .setup import amp_note, build_data, build_state, seed, with_amp, with_class_count
from .stops import NonFiniteGuard, Preempted


def train(cfg: Config, resume: str | None = None) -> dict[str, Any]:
    """Run training as ``cfg`` says; ``resume`` is a checkpoint path, ``"auto"`` or None.

    Returns the last epoch's metrics, or ``{"preempted": True, "epoch": E, "step": S}`` when a signal stopped
    the run (after a checkpoint at that step).
    """
    info = setup_distributed(timeout=cfg.train.dist_timeout)
    out = OutputDir(cfg.output_dir)
    try:
        metrics = _run(cfg, resume, info, out)
    except BaseException as e:
        # The run's own error is what the user must see: leaving the group can fail too when a peer is gone.
        with suppress(Exception):
            cleanup_distributed()
        lost = peer_lost(e, info, cfg.train.dist_timeout, out.last) if isinstance(e, Exception) else None
        if lost is None:
            raise
        raise lost from e
    cleanup_distributed()
    return metrics


def _run(cfg: Config, resume: str | None, info: DistInfo, out: OutputDir) -> dict[str, Any]:
    checkpoints = CheckpointManager(cfg, info, out)
    source = checkpoints.resume_source(resume)  # RunError: a named file missing, or another run in out
    seed(cfg, info)  # before anything draws a random number
    data = build_data(cfg, info)  # splits, classes, the training stream, the val loader
    # model.num_classes: auto becomes the training split's count, train.amp: auto this device's native precision:
    # what the head, every step, config.yaml and the checkpoints hold.
    amp_auto = cfg.train.amp == "auto"
    cfg = checkpoints.cfg = with_amp(with_class_count(cfg, data.classes), info)
    state = build_state(cfg, info, data)  # model, optimizer, schedule, mixup, loss, scaler, EMA, DDP, compile
    resumed = checkpoints.restore(state, source) if source is not None else None
    if info.is_main:
        out.prepare(cfg)  # the folder, a killed save's temporaries removed, config.yaml
    log = RunLog(cfg, info, out)  # progress bar, TensorBoard, metrics.jsonl, stderr lines
    if amp_auto:
        log.say(amp_note(cfg, info))  # once the run has started: a setup error stays the only line
    if data.decode_note:
        log.say(data.decode_note)
    preempt = Preempted()  # only now: a signal during setup still ends the process at once
    # train.deterministic: ops without a deterministic kernel (none on CPU) are named once, after the first step.
    alerts = KernelAlerts(quiet=not info.is_main)
    if cfg.train.deterministic:
        alerts.__enter__()
    guard = NonFiniteGuard(state.model, cfg.train.skip_nonfinite, info)
    loop = Loop(cfg, info, state, data, checkpoints, guard, preempt, alerts, log, out)
    first = state.progress.epoch
    try:
        metrics: dict[str, Any] = {}
        for epoch in range(first, cfg.train.epochs):
            tally, stopped = loop.train_epoch(epoch, resumed if epoch == first else None)
            if stopped is not None:
                return stopped
            metrics, is_best, val_skipped = loop.end_epoch(epoch, tally)  # schedule, validation (+EMA), best
            # best.pth before last.pth: a run killed between the two redoes this epoch and writes best.pth
            # again. last.pth carries the epoch's metrics: a run killed before its metrics.jsonl line gets it.
            if is_best:
                checkpoints.save(BEST, state, epoch + 1, 0)
            checkpoints.save(LAST, state, epoch + 1, 0, extra={"metrics": metrics})
            faults.point("epoch_end")
            log.epoch_done(metrics, tally, val_skipped)  # metrics.jsonl line, TensorBoard, stderr
        log.draw_curves()  # curves.png from metrics.jsonl (also when --resume auto finds the run finished)
        return metrics
    finally:
        log.close_bar()
        preempt.restore()
        if cfg.train.deterministic:
            alerts.__exit__(None, None, None)
        log.close()
