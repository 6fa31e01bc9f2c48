"""Why a training run stops with one line for the user instead of a traceback."""

from __future__ import annotations


class RunError(ValueError):
    """A run that cannot start (bad data, clashing output_dir, ...): one line for the user."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf (more often than ``train.skip_nonfinite`` allows): one line for the user."""
