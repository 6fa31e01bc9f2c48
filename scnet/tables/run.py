"""Run a table: train every row and seed through ``scnet-train`` (``torchrun`` for several processes), evaluate
each, report.

Each (row, seed) trains in the shared run store (:mod:`scnet.tables.store`), so a row that several tables
hold trains once per seed. Re-running the same command is always safe: a finished run is not retrained, an
interrupted one resumes from its ``last.pth`` (``scnet-train --resume auto``), and an evaluation is redone
only when its checkpoint or data changed. A signal (Ctrl-C, a scheduler's SIGTERM) reaches the trainer, which
checkpoints and exits; the runner then stops and says how to go on. One runner at a time works on an output
folder (a lock that the trainer inherits, so a trainer orphaned by a killed runner still holds it until it
has written its checkpoint).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
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
from . import records, report
from .spec import Row, Table, TableError
from .store import MAY_DIFFER, SeedRun, absolute_root, adopt_earlier_run, flat, seed_runs

_SYNSET = re.compile(r"n\d{8}")


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
    seeds: int = 1
    train: bool = True
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


def is_imagenet1k(classes: list[str]) -> bool:
    """True for ImageNet-1k's class list: 1000 WordNet synset ids (``n01440764`` ...)."""
    return len(classes) == 1000 and all(_SYNSET.fullmatch(c) for c in classes)


def run_overrides(options: RunOptions) -> list[str]:
    """The overrides every row gets: the data root (as an absolute path, so that the run store's key does not
    depend on the working directory), the data's class count (the rows are ImageNet configs, so other data
    needs its own head; the user's own model.num_classes wins), then the user's overrides."""
    overrides = [f"data.root={resolve_root(options.data, key='--data').resolve()}"]
    if not any(o.split("=", 1)[0].strip() == "model.num_classes" for o in options.overrides):
        overrides.append(f"model.num_classes={len(data_classes(options.data))}")
    return overrides + list(options.overrides)


def seed_overrides(run: SeedRun) -> list[str]:
    """The overrides that make one seed's run of a row: its seed and its folder."""
    return [f"train.seed={run.seed}", f"output_dir={run.folder}"]


@dataclass(frozen=True)
class PlannedRun:
    """One (row, seed) of a table run: where it trains and its validated config."""

    row: Row
    run: SeedRun
    cfg: Config


def plan(table: Table, options: RunOptions, rows: list[Row] | None = None) -> list[PlannedRun]:
    """Every (row, seed) of ``rows`` (default: the whole table), seed by seed: the first seed of every row, then
    the second, ... so that an interrupted sweep has a comparison early. Each config is validated here."""
    overrides = run_overrides(options)
    planned: dict[int, list[PlannedRun]] = {}
    for row in rows if rows is not None else table.rows:
        base = load_config(row.config, overrides)
        for k, run in enumerate(seed_runs(options.out, base, options.seeds)):
            planned.setdefault(k, []).append(
                PlannedRun(row, run, load_config(row.config, overrides + seed_overrides(run)))
            )
    return [p for k in sorted(planned) for p in planned[k]]


def check_same_settings(row: Row, cfg: Config, folder: Path) -> None:
    """Refuse to continue a run whose saved config differs from this run's (a folder edited by hand, or two
    settings that the store's key does not tell apart)."""
    saved_path = folder / CONFIG
    if not saved_path.is_file():
        return
    saved = flat(config_to_dict(absolute_root(load_config(saved_path))))
    wanted = flat(config_to_dict(cfg))
    for key in wanted:
        if key not in MAY_DIFFER and saved.get(key) != wanted[key]:
            raise TableError(
                f"row {row.row} in {folder} was trained with {key}={saved.get(key)}, this run asks for "
                f"{wanted[key]}: move that folder away, or give another --out"
            )


# ----------------------------------------------------------------------------------------------- training


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the runner dies, so a trainer is never left running unattended."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def train_command(row: Row, cfg: Config, options: RunOptions) -> list[str]:
    """The command that trains (or resumes) one seed of the row: scnet-train, under torchrun for several
    processes."""
    overrides = [*run_overrides(options), f"train.seed={cfg.train.seed}", f"output_dir={cfg.output_dir}"]
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
        raise Stopped(received[0], f"{row.row} (seed {cfg.train.seed})")
    if code != 0:
        raise TableError(
            f"row {row.row} seed {cfg.train.seed}: scnet-train exited with status {code} (its message is above)"
        )


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
    done = records.read_json(folder / records.EVAL_FILE)
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
    report.write_atomic(folder / records.EVAL_FILE, json.dumps(evaluation, indent=2) + "\n")
    return evaluation


def evaluate_row(row: Row, cfg: Config, folder: Path, options: RunOptions) -> dict[str, Any]:
    """Evaluate one seed's best checkpoint on the val split of the run's data, as ``scnet-eval`` does."""
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
    folder = records.release_dir(options.out, table, row.row)
    workers = min(cfg.data.workers, os.cpu_count() or 1)
    data = resolve_root(options.data)
    _evaluate_once(path, folder, data, cfg.data.val_split, options, cfg.model.name, cfg.data.batch_size, workers)
    return True


# ----------------------------------------------------------------------------------------------- the table


# How long a run that trains nothing (``--no-train``: evaluations and reports, e.g. at the end of each task of a
# SLURM array) waits for another runner to let go of the output folder, instead of failing at once.
NO_TRAIN_WAIT_S = 3600.0


@contextlib.contextmanager
def table_lock(folder: Path, wait_s: float = 0.0) -> Iterator[int]:
    """Hold ``folder/.lock`` (exclusive), waiting up to ``wait_s`` seconds for another holder to let go; yields its
    file descriptor for the trainers to inherit."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = f" (waited {wait_s:.0f} s)" if wait_s else ""
                    raise TableError(
                        f"{folder} is in use by another scnet-table run (or by a trainer still writing its "
                        f"checkpoint){waited}; wait for it to end"
                    ) from None
                if not waiting:
                    _say(f"{folder} is in use by another scnet-table run: waiting up to {wait_s:.0f} s")
                    waiting = True
                time.sleep(0.5)
        yield fd
    finally:
        os.close(fd)


def _run_info(table: Table, options: RunOptions, classes: list[str], everything: list[PlannedRun]) -> dict[str, Any]:
    """What ``<out>/<table>/run.json`` records of this run: its settings, whether the data are ImageNet-1k's
    classes, and every row's seed runs (folders relative to ``--out``), which the report reads."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for p in everything:
        folder = p.run.folder.relative_to(options.out)
        runs.setdefault(p.row.row, []).append({"seed": p.run.seed, "folder": str(folder)})
    return {
        "table": table.name,
        "data": options.data,
        "overrides": options.overrides,
        "seeds": options.seeds,
        "nproc_per_node": options.nproc_per_node,
        "classes": len(classes),
        "imagenet_classes": is_imagenet1k(classes),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": runs,
    }


def run_table(table: Table, options: RunOptions) -> list[dict[str, Any]]:
    """Train, evaluate and report the rows and seeds of ``table`` that ``options`` selects; return the records."""
    rows = table.select(options.rows)
    if options.nproc_per_node < 1:
        raise TableError(f"--nproc-per-node must be at least 1, got {options.nproc_per_node}")
    # A missing data root fails before anything runs; the built-in demo set is drawn now (its classes are needed).
    resolve_root(options.data, draw=True, key="--data")
    classes = data_classes(options.data)
    # Every run's config is resolved (and so validated, --seeds too) before the first one trains; the rows not
    # selected too, since another table may have trained them in the shared store: the report shows them.
    everything = plan(table, options)
    selected = {row.row for row in rows}
    todo = [p for p in everything if p.row.row in selected]
    out = Path(options.out)
    with table_lock(out, 0.0 if options.train else NO_TRAIN_WAIT_S) as lock_fd:
        run_info = _run_info(table, options, classes, everything)
        report.write_atomic(out / table.name / records.RUN_FILE, json.dumps(run_info, indent=2) + "\n")
        said: set[str] = set()
        for i, p in enumerate(todo, start=1):
            folder, epochs = p.run.folder, p.cfg.train.epochs
            where = f"{table.name}/{p.row.row} seed {p.run.seed} ({i}/{len(todo)})"
            adopted = adopt_earlier_run(out, table.name, p.row.row, p.run, p.cfg)
            if adopted and adopted not in said:
                said.add(adopted)
                _say(adopted)
            check_same_settings(p.row, p.cfg, folder)
            if records.is_trained(folder, epochs):
                _say(f"{where}: trained already ({epochs} epoch(s) in {folder}), not retrained")
            elif not options.train:
                _say(f"{where}: not trained yet, left as it is (--no-train)")
                continue
            else:
                _say(f"{where}: {'resuming' if (folder / LAST).is_file() else 'training'} in {folder}")
                train_row(p.row, p.cfg, options, lock_fd)
                if not records.is_trained(folder, epochs):
                    raise TableError(
                        f"row {p.row.row} seed {p.run.seed}: scnet-train stopped before epoch {epochs} (a signal?); "
                        "run the same command again to resume it"
                    )
            evaluate_row(p.row, p.cfg, folder, options)
            report.write_reports(table, out)
        first = {p.row.row: p.cfg for p in reversed(todo)}
        for row in rows:
            evaluate_release(table, row, first[row.row], options)
        return report.write_reports(table, out)
