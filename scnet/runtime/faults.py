"""Fault injection for the reliability tests: a named point in the trainer kills its own process with
SIGKILL when the environment asks for it, so that a test can stop a real run at an exact, reproducible moment.

``SCNET_FAULT=NAME:N`` kills the process the N-th time (1-based) it passes point ``NAME``;
``SCNET_FAULT=NAME:N:rank=R`` only on rank R (the ``RANK`` torchrun sets). Unset, as always outside tests,
:func:`point` costs one comparison.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "data",  # the trainer is about to take a micro-batch from the loader (its workers are decoding)
    "step",  # after a step's backward, before the optimizer updates the weights
    "eval",  # a validation batch has been evaluated
    "checkpoint_written",  # a checkpoint's temporary file is written and synced, not yet renamed
    "checkpoint_between_renames",  # last.pth has moved to last.prev.pth; the new last.pth is not in place yet
    "epoch_end",  # an epoch's checkpoint is written, its metrics.jsonl line not yet
)


def _parse(spec: str) -> tuple[str, int] | None:
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    count, _, rank = rest.partition(":")
    if name not in POINTS or not count.isdigit() or int(count) < 1 or (rank and not rank.startswith("rank=")):
        raise ValueError(f"SCNET_FAULT={spec!r}: expected NAME:N[:rank=R] with NAME one of {', '.join(POINTS)}")
    if rank and rank.removeprefix("rank=") != os.environ.get("RANK", "0"):
        return None
    return name, int(count)


_armed = _parse(os.environ.get("SCNET_FAULT", ""))
_passes = 0


def point(name: str) -> None:
    """Kill this process here if ``SCNET_FAULT`` names this point and this is the pass it names."""
    global _passes
    if _armed is None or _armed[0] != name:
        return
    _passes += 1
    if _passes == _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)
