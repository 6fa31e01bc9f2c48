"""The run folder: what the trainer writes there, by name, and how its metrics.jsonl is read back.

The folder is the contract between the trainer and its readers (``scnet-table``, ``--resume auto``):
``config.yaml``, ``metrics.jsonl`` (one line per finished epoch), ``last.pth`` (and ``last.prev.pth``, the
one before), ``best.pth``, ``tb/`` and, at the end, ``curves.png`` (drawn from metrics.jsonl).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from ..config import Config, dump_config
from ..runtime.files import write_atomic
from . import checkpoints
from .errors import RunError

CONFIG, METRICS, LAST, BEST, TENSORBOARD = "config.yaml", "metrics.jsonl", "last.pth", "best.pth", "tb"
CURVES = "curves.png"


def read_metrics(folder: Path, torn: Literal["stop", "skip"] = "stop") -> list[dict[str, Any]]:
    """The per-epoch lines of ``folder``'s metrics.jsonl (empty when it has none yet).

    A line that does not parse (cut short by a kill mid-write) ends the reading (``torn="stop"``: what came
    before it is good) or is left out (``"skip"``).
    """
    path = Path(folder) / METRICS
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            if torn == "stop":
                break
    return lines


class OutputDir:
    """A run's ``output_dir`` and the files in it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.last, self.best, self.metrics = self.path / LAST, self.path / BEST, self.path / METRICS

    def kept(self, what: str = "last checkpoint") -> str:
        """What a failure leaves the user: ``last checkpoint: PATH``, or that none was written yet."""
        return f"{what}: {self.last}" if self.last.is_file() else "no checkpoint written yet"

    def latest_checkpoint(self) -> Path | None:
        """``last.pth`` if a run left one here, else the previous one it kept (``last.prev.pth``)."""
        for candidate in (self.last, checkpoints.previous_path(self.last)):
            if candidate.is_file():
                return candidate
        return None

    def check_fresh(self, resuming: bool) -> None:
        """A new run must not write over another run's checkpoints."""
        if not resuming and self.path.exists() and any(self.path.glob("*.pth")):
            raise RunError(
                f"{self.path} already holds a run: resume it with --resume auto, or set output_dir to a new folder"
            )

    def prepare(self, cfg: Config) -> None:
        """Create the folder, remove the temporaries of a process killed while writing, write config.yaml."""
        self.path.mkdir(parents=True, exist_ok=True)
        checkpoints.remove_stale_temporaries(self.path)
        dump_config(cfg, self.path / CONFIG)

    def append_metrics(self, metrics: dict[str, Any]) -> None:
        """Add one finished epoch's line to metrics.jsonl."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def align_metrics(self, saved: dict[str, Any]) -> None:
        """Make metrics.jsonl list exactly the epochs the resumed checkpoint ``saved`` has finished.

        Lines of later epochs (a resume from an older checkpoint redoes them) and a torn line go; the line of
        the checkpoint's own epoch is added from the checkpoint when the run was killed before writing it.
        """
        finished = saved["epoch"]
        kept = [
            m
            for m in read_metrics(self.path, torn="skip")
            if isinstance(m, dict) and isinstance(m.get("epoch"), int) and m["epoch"] <= finished
        ]
        line = saved.get("metrics")
        if line and line.get("epoch") == finished and all(m["epoch"] != finished for m in kept):
            kept.append(line)
        text = "".join(json.dumps(m) + "\n" for m in kept)
        if text != (self.metrics.read_text() if self.metrics.is_file() else ""):
            temp = self.metrics.with_name(f".{METRICS}.tmp")
            write_atomic(self.metrics, lambda f: f.write(text.encode()), temp=temp)
