"""What every command does the same way: end in one line on stderr, and choose a device."""

from __future__ import annotations

import sys

import torch


def fail(prog: str, error: BaseException | str, status: int = 2, show: bool = True) -> int:
    """Print ``PROG: error: MESSAGE`` as one line (unless ``show`` is False, e.g. on ranks other than 0) and
    return ``status`` (2: bad input, the default)."""
    if show:
        message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message
        print(f"{prog}: error: {message}", file=sys.stderr)
    return status


def choose_device(requested: str | None) -> str:
    """``requested``, or CUDA when there is one, else CPU; ValueError for ``cuda`` without CUDA."""
    kind = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but CUDA is not available")
    return kind
