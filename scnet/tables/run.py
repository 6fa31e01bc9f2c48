"""Run a table: train every row through ``scnet-train`` (``torchrun`` for several processes), evaluate it, report.

Re-running the same command is always safe: a finished row is not retrained, an interrupted one resumes
from its ``last.pth`` (``scnet-train --resume auto``), and an evaluation is redone only when its checkpoint
or data changed. A signal (Ctrl-C, a scheduler's SIGTERM) reaches the trainer, which checkpoints and
exits; the runner then stops and says how to go on. One runner at a time works on a table folder (a lock
that the trainer inherits, so a trainer orphaned by a killed runner still holds it until it has written
its checkpoint).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_to_dict, load_config
from ..data.builtin import resolve_root
from ..data.folders import read_class_list
from ..data.shards import INDEX, read_index
from ..inference.accuracy import evaluate_checkpoint
from ..inference.checkpoint import load_checkpoint
from ..train.output import BEST, CONFIG, LAST
from . import report
from .spec import Row, Table, TableError

# Keys that may change between a run and its resumption without changing what is trained.
_MAY_DIFFER = {"data.workers", "train.log_every", "train.tensorboard"}


class Stopped(Exception):
    """The runner was asked to stop (signal); the row's trainer has checkpointed."""

    def __init__(self, signum: int, row: str) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} during row {row}")
        self.signum = signum


@dataclass
class RunOptions:
    """What ``scnet-table run`` was asked to do."""

    data: str
    out: Path = Path("runs/tables")
    rows: list[str] | None = None
    overrides: list[str] = field(default_factory=list)
    nproc_per_node: int = 1
    release_weights: Path | None = None
    real_labels: Path | None = None
    imagenet_v2: Path | None = None
    device: str | None = None


def _say(message: str) -> None:
    print(f"scnet-table: {message}", file=sys.stderr, flush=True)


def data_classes(root: str | Path, split: str = "train") -> list[str]:
    """The class list of a data root as the trainer indexes it: ``classes.txt``, else the shards' index, else
    the training split's folder names (listed, not scanned: cheap on ImageNet's 1.3M files)."""
    folder = resolve_root(str(root), key="--data")
    listed = read_class_list(folder)
    if listed is not None:
        return listed
    if (folder / split / INDEX).is_file():
        return list(read_index(folder / split)["classes"])
    train = folder / split
    if not train.is_dir():
        raise TableError(f"{train}: no such data folder")
    return sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))


def run_overrides(options: RunOptions) -> list[str]:
    """The overrides every row gets: the data root, the data's class count (the rows are ImageNet configs, so
    other data needs its own head; the user's own model.num_classes wins), then the user's overrides."""
    overrides = [f"data.root={options.data}"]
    if not any(o.split("=", 1)[0].strip() == "model.num_classes" for o in options.overrides):
        overrides.append(f"model.num_classes={len(data_classes(options.data))}")
    return overrides + list(options.overrides)


def row_config(row: Row, options: RunOptions, folder: Path) -> Config:
    """The row's config with the run's data root, overrides and output folder (validated)."""
    return load_config(row.config, [*run_overrides(options), f"output_dir={folder}"])


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_same_settings(row: Row, cfg: Config, folder: Path) -> None:
    """Refuse to continue a row whose saved config differs from this run's (another recipe in the same folder)."""
    saved_path = folder / CONFIG
    if not saved_path.is_file():
        return
    saved = _flat(config_to_dict(load_config(saved_path)))
    wanted = _flat(config_to_dict(cfg))
    for key in wanted:
        if key not in _MAY_DIFFER and saved.get(key) != wanted[key]:
            raise TableError(
                f"row {row.row} in {folder} was trained with {key}={saved.get(key)}, this run asks for "
                f"{wanted[key]}: run with the same settings, or give another --out"
            )


# ----------------------------------------------------------------------------------------------- training


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the runner dies, so a trainer is never left running unattended."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def train_command(row: Row, cfg: Config, options: RunOptions) -> list[str]:
    """The command that trains (or resumes) the row: scnet-train, under torchrun for several processes."""
    overrides = [*run_overrides(options), f"output_dir={cfg.output_dir}"]
    train = ["-m", "scnet.cli.train", "--config", str(row.config), *overrides, "--resume", "auto"]
    if options.nproc_per_node > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={options.nproc_per_node}"]
        return [sys.executable, *launcher, *train]
    return [sys.executable, *train]


def train_row(row: Row, cfg: Config, options: RunOptions, lock_fd: int) -> None:
    """Train the row to its last epoch (resuming what is there); raise :class:`Stopped` on a signal."""
    command = train_command(row, cfg, options)
    child = subprocess.Popen(command, preexec_fn=_die_with_parent, pass_fds=(lock_fd,))
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:  # noqa: ARG001 - signal handler signature
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)  # the trainer checkpoints at the end of its step, then exits

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        raise Stopped(received[0], row.row)
    if code != 0:
        raise TableError(f"row {row.row}: scnet-train exited with status {code} (its message is above)")


# ----------------------------------------------------------------------------------------------- evaluation


def _file_key(path: Path | None) -> list[Any] | None:
    if path is None:
        return None
    stat = Path(path).stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _evaluate_once(
    checkpoint: Path,
    folder: Path,
    data: Path,
    split: str,
    options: RunOptions,
    model_name: str | None = None,
    batch_size: int = 64,
    workers: int = 2,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (its EMA weights too, and ImageNet-V2 when given) into ``folder/eval.json``,
    unless that file already holds the evaluation of this very checkpoint on this very data."""
    key = {
        "checkpoint": _file_key(checkpoint),
        "data": str(data.resolve()),
        "split": split,
        "real_labels": _file_key(options.real_labels),
        "imagenet_v2": str(options.imagenet_v2) if options.imagenet_v2 else None,
    }
    done = report.read_json(folder / report.EVAL_FILE)
    if done and done.get("key") == key:
        _say(f"{checkpoint}: evaluated already on {data / split}")
        return done
    _say(f"evaluating {checkpoint} on {data / split}")
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    common = dict(batch_size=batch_size, workers=workers)
    loaded = load_checkpoint(checkpoint, model_name=model_name, device=device)
    result = evaluate_checkpoint(loaded, data, split, real_labels=options.real_labels, **common)
    ema = None
    if loaded.has_ema:
        ema = evaluate_checkpoint(
            load_checkpoint(checkpoint, model_name, ema=True, device=device), data, split, **common
        )
    v2 = None
    if options.imagenet_v2 is not None:
        v2_dir = Path(options.imagenet_v2)
        v2 = evaluate_checkpoint(loaded, v2_dir.parent, v2_dir.name, **common)
    evaluation = {"key": key, "result": result, "ema": ema, "v2": v2}
    report.write_atomic(folder / report.EVAL_FILE, json.dumps(evaluation, indent=2) + "\n")
    return evaluation


def evaluate_row(row: Row, cfg: Config, folder: Path, options: RunOptions) -> dict[str, Any]:
    """Evaluate the row's best checkpoint on the val split of the run's data, as ``scnet-eval`` does."""
    data = resolve_root(options.data)
    workers = min(cfg.data.workers, os.cpu_count() or 1)
    return _evaluate_once(
        folder / BEST, folder, data, cfg.data.val_split, options, batch_size=cfg.data.batch_size, workers=workers
    )


def evaluate_release(table: Table, row: Row, cfg: Config, options: RunOptions) -> bool:
    """Evaluate the released checkpoint of the row's model, if ``--release-weights`` holds it; True if it did."""
    published = row.published
    if options.release_weights is None or published is None or published.checkpoint is None:
        return False
    path = Path(options.release_weights) / published.checkpoint
    if not path.is_file():
        _say(f"{table.name}/{row.row}: no {published.checkpoint} in {options.release_weights}, skipped")
        return False
    folder = report.row_dir(options.out, table, row.row + report.RELEASE_SUFFIX)
    workers = min(cfg.data.workers, os.cpu_count() or 1)
    data = resolve_root(options.data)
    _evaluate_once(path, folder, data, cfg.data.val_split, options, cfg.model.name, cfg.data.batch_size, workers)
    return True


# ----------------------------------------------------------------------------------------------- the table


@contextlib.contextmanager
def table_lock(folder: Path) -> Iterator[int]:
    """Hold ``folder/.lock`` (exclusive, not waiting); yields its file descriptor for the trainers to inherit."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TableError(
                f"{folder} is in use by another scnet-table run (or by a trainer still writing its checkpoint); "
                "wait for it to end"
            ) from None
        yield fd
    finally:
        os.close(fd)


def run_table(table: Table, options: RunOptions) -> list[dict[str, Any]]:
    """Train, evaluate and report the rows of ``table`` that ``options`` selects; return the table's records."""
    rows = table.select(options.rows)
    if options.nproc_per_node < 1:
        raise TableError(f"--nproc-per-node must be at least 1, got {options.nproc_per_node}")
    # A missing data root fails before anything runs; the built-in demo set is drawn now (its classes are needed).
    resolve_root(options.data, draw=True, key="--data")
    # Every row's config is resolved (and so validated) before the first one trains.
    configs = {row.row: row_config(row, options, report.row_dir(options.out, table, row.row)) for row in rows}
    folder = Path(options.out) / table.name
    with table_lock(folder) as lock_fd:
        run_info = {
            "table": table.name,
            "data": options.data,
            "overrides": options.overrides,
            "nproc_per_node": options.nproc_per_node,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        report.write_atomic(folder / report.RUN_FILE, json.dumps(run_info, indent=2) + "\n")
        for i, row in enumerate(rows, start=1):
            cfg = configs[row.row]
            row_folder = Path(cfg.output_dir)
            where = f"{table.name}/{row.row} ({i}/{len(rows)})"
            check_same_settings(row, cfg, row_folder)
            if report.is_trained(row_folder, cfg.train.epochs):
                _say(f"{where}: trained already ({cfg.train.epochs} epoch(s) in {row_folder}), not retrained")
            else:
                resuming = (row_folder / LAST).is_file()
                _say(f"{where}: {'resuming' if resuming else 'training'} in {row_folder}")
                train_row(row, cfg, options, lock_fd)
                if not report.is_trained(row_folder, cfg.train.epochs):
                    raise TableError(
                        f"row {row.row}: scnet-train stopped before epoch {cfg.train.epochs} (a signal?); "
                        "run the same command again to resume it"
                    )
            evaluate_row(row, cfg, row_folder, options)
            evaluate_release(table, row, cfg, options)
            report.write_reports(table, options.out)
        return report.write_reports(table, options.out)
