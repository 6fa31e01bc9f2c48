"""Files that an interruption never leaves half-written, and the temporaries a killed writer left behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def pid_temporary(path: Path) -> Path:
    """A temporary beside ``path`` that only this process writes: ``.NAME.PID.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_atomic(
    path: Path, write: Callable[[BinaryIO], object], temp: Path | None = None, fsync: bool = False
) -> Path:
    """Run ``write(file)`` on ``temp`` (default :func:`pid_temporary`), then rename it over ``path``.

    Readers of ``path`` see the old file or the whole new one, never part of it. On any failure, an interrupt
    included, the temporary is removed and the exception goes on. ``fsync`` makes the content durable before
    the rename (for files that must survive a power cut, not only a killed process).
    """
    path = Path(path)
    tmp = pid_temporary(path) if temp is None else Path(temp)
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """:func:`write_atomic` of ``data``."""
    return write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: Path, text: str) -> Path:
    """:func:`write_atomic` of UTF-8 text."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def idle_for(path: Path, now: float) -> float:
    """Seconds since ``path`` was last written; 0 when it is gone (renamed by its writer meanwhile)."""
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
