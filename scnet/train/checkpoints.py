"""Checkpoint files that a crash cannot half-write: written atomically, the previous one kept, read safely."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..runtime import faults
from ..runtime.messages import first_line


def previous_path(path: Path) -> Path:
    """Where :func:`save_atomic` keeps the file that ``path`` held before (``last.pth`` -> ``last.prev.pth``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, file-size limit, I/O error): one line naming the file and
    the cause. The file it would have replaced is untouched and no temporary is left behind."""


def temporary_path(path: Path) -> Path:
    """Where :func:`save_atomic` writes ``path`` before renaming it (``last.pth`` -> ``.last.pth.tmp``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


class _KeepWriteError:
    """A file that remembers why a write failed: torch.save reports a failed write as an opaque RuntimeError
    ("unexpected pos ..."), the user needs the OSError behind it (no space left, file too large)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_atomic(state: dict[str, Any], path: Path, keep_previous: bool = False) -> None:
    """Write ``state`` to ``path`` via a temporary file, fsync and rename: ``path`` is always whole.

    ``keep_previous`` first moves the file ``path`` held to :func:`previous_path`, so that a checkpoint found
    damaged later (a disk failure) still has a good predecessor to resume from. A failed write raises
    :class:`CheckpointWriteError` and removes the temporary: ``path`` (and its predecessor) are as before.
    """
    path = Path(path)
    tmp = temporary_path(path)
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = _KeepWriteError(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        faults.point("checkpoint_written")
        if keep_previous and path.is_file():
            os.replace(path, previous_path(path))  # a crash right after: --resume auto falls back to it
            faults.point("checkpoint_between_renames")
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the renames themselves durable
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        e = writer.error if writer is not None and writer.error is not None else e
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {first_line(e)}") from e


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries a killed :func:`save_atomic` left in ``folder`` (they are never read); returns them."""
    stale = [p for p in Path(folder).glob(".*.pth.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)
