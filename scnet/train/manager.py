"""A run's checkpoints: which one to resume from, restoring it, and writing one on every rank's behalf.

The files themselves (atomic writes, the previous one kept) are :mod:`.checkpoints`; what a checkpoint holds
is :class:`~scnet.train.state.TrainState`. The loop only says when (a step or an epoch ended); the cadence of
mid-epoch checkpoints (``train.checkpoint_every_steps``) is decided here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..config import Config, config_to_dict
from ..data.stream import TrainStream
from ..models.weights import check_compatible, unreadable
from ..runtime.distributed import DistInfo
from . import checkpoints
from .errors import RunError
from .output import LAST, OutputDir
from .state import EpochTally, ResumePoint, TrainState, rng_state


def _read_first_good(candidates: list[Path], is_main: bool) -> tuple[dict, Path]:
    """The first readable training checkpoint of ``candidates``, saying in one line
    when it is not the first; a RunError naming every problem when none is."""
    problems = []
    for path in candidates:
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        try:
            saved = checkpoints.load(path)
        except Exception as e:  # noqa: BLE001 - truncated, empty, random or unsafe bytes: one line for the user
            problems.append(str(unreadable(path, e)))
            continue
        if not isinstance(saved, dict) or "model" not in saved or "optimizer" not in saved:
            problems.append(f"{path}: not a training checkpoint of scnet-train (use model.pretrained for weights)")
            continue
        if problems and is_main:
            print(f"warning: {problems[-1]}; resuming from the previous checkpoint, {path}", file=sys.stderr)
        return saved, path
    if len(candidates) > 1:
        problems.append("no good checkpoint left to resume from")
    raise RunError("; ".join(problems))


def _check_classes(path: Path, saved: dict, classes: list[str], root: str) -> None:
    """A resumed run must index the classes as the checkpoint's run did (absent in older checkpoints)."""
    before = saved.get("classes")
    if before is None or list(before) == classes:
        return
    missing = [c for c in before if c not in classes]
    new = [c for c in classes if c not in before]
    what = f"{missing[0]!r} is missing" if missing else f"{new[0]!r} is new" if new else "in another order"
    raise RunError(
        f"{path}: its run trained on {len(before)} classes, the training split of data.root={root} "
        f"has {len(classes)} ({what}); resume with the same classes"
    )


class CheckpointManager:
    """Resume and save a run's checkpoints in ``out``, for the process ``info``."""

    def __init__(self, cfg: Config, info: DistInfo, out: OutputDir) -> None:
        self.cfg, self.info, self.out = cfg, info, out
        self.every = cfg.train.checkpoint_every_steps
        self.resume: str | None = None

    def resume_source(self, resume: str | None) -> Path | None:
        """The checkpoint ``--resume`` names (a path, ``"auto"`` or None); refuses to start over another run."""
        path = self.out.latest_checkpoint() if resume == "auto" else (Path(resume) if resume else None)
        if resume and resume != "auto" and not path.is_file():
            raise RunError(f"{resume}: no such checkpoint")
        self.out.check_fresh(path is not None)
        self.resume = resume if path is not None else None
        return path

    def restore(self, state: TrainState, source: Path) -> ResumePoint:
        """Load the checkpoint into ``state`` (this rank's RNG last); rank 0 realigns metrics.jsonl with it.

        ``--resume auto`` may fall back to the checkpoint before a damaged (or, killed mid-rename, missing)
        last one; a named file may not.
        """
        candidates = [self.out.last, checkpoints.previous_path(self.out.last)] if self.resume == "auto" else [source]
        saved, path = _read_first_good(candidates, self.info.is_main)
        _check_classes(path, saved, state.classes, self.cfg.data.root)
        check_compatible(state.model, saved["model"], str(path))
        point = state.load(saved, self.info.rank)
        if self.info.is_main:
            self.out.align_metrics(saved)
        return point

    def due(self, global_step: int, step: int, steps_per_epoch: int) -> bool:
        """Whether a mid-epoch checkpoint is due after this step (the epoch's last step has its own)."""
        return bool(self.every) and global_step % self.every == 0 and step < steps_per_epoch

    def save(
        self,
        name: str,
        state: TrainState,
        epoch: int,
        step: int,
        tally: EpochTally | None = None,
        stream: TrainStream | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Write ``out/name`` (rank 0) with every rank's RNG and, mid-epoch (``step`` > 0), its epoch sums
        (``tally``) and how far its loader workers have read (``stream``, shards): a resumed epoch then reports
        what the uninterrupted one would have.

        All ranks call this together; when rank 0 cannot write, every rank raises the same CheckpointWriteError
        (none waits for a rank 0 that has stopped).
        """
        mid = step > 0
        position = stream.position() if mid and stream is not None else None
        part = (rng_state(), position, tally.so_far() if mid and tally is not None else None)
        ranks = [part]
        if self.info.world_size > 1:
            ranks = [None] * self.info.world_size
            dist.all_gather_object(ranks, part)
        error = None
        if self.info.is_main:
            saved = state.file_dict(config_to_dict(self.cfg), epoch, step, ranks, extra)
            try:
                checkpoints.save_atomic(saved, self.out.path / name, keep_previous=name == LAST)
            except checkpoints.CheckpointWriteError as e:
                error = str(e)
        shared = [error]
        if self.info.world_size > 1:
            dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None:
            kept = f"the last good checkpoint is {self.out.last}" if self.out.last.is_file() else None
            raise checkpoints.CheckpointWriteError(
                f"{shared[0]}; {kept or 'no checkpoint was written yet'} (untouched; no partial file left)"
            )
