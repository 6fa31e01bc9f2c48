"""Real scnet-train processes for the fault-injection tests: start, kill, resume, compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# One thread in every process: bitwise equality needs the same reduction order. No fault unless a test sets one.
ENV = {k: v for k, v in os.environ.items() if k != "SCNET_FAULT"} | {"OMP_NUM_THREADS": "1"}
KILLED = -signal.SIGKILL
# The metrics that must come out the same after any number of kills (timings differ by nature).
STABLE_METRICS = (
    "epoch",
    "train_loss",
    "lr",
    "top1",
    "top5",
    "ema_top1",
    "ema_top5",
    "val_images",
    "replaced",
    "nonfinite_steps",
)


def overrides(data: Path, out: Path, epochs: int = 2, workers: int = 2) -> list[str]:
    """A deterministic CPU run of SCNet-50 on the tiny demo set: 20 images at batch 4, 5 steps an epoch, a
    checkpoint every 2 steps and at each epoch's end, validation on 10 images (3 batches) after each epoch."""
    return [
        f"data.root={data}",
        "data.batch_size=4",
        f"data.workers={workers}",
        "data.image_size=100",
        f"output_dir={out}",
        f"train.epochs={epochs}",
        "train.deterministic=true",
        "train.tensorboard=false",
        "train.checkpoint_every_steps=2",
        "train.log_every=1",
        "schedule.name=step",
        "schedule.milestones=[30]",
        "schedule.warmup_epochs=0",
    ]


def train_command(data: Path, out: Path, *extra: str, **kw) -> list[str]:
    """``scnet-train`` as a user runs it (``--resume auto``: the same command starts and resumes the run)."""
    return [
        sys.executable,
        "-m",
        "scnet.cli.train",
        "--config",
        str(QUICKSTART),
        *overrides(data, out, **kw),
        *extra,
        "--resume",
        "auto",
    ]


def run(
    command: Sequence[str],
    fault: str | None = None,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``command`` to its end (or its injected death), capturing its output."""
    env = {**(env or ENV), **({"SCNET_FAULT": fault} if fault else {})}
    return subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, preexec_fn=preexec_fn
    )


def run_here(command: Sequence[str]) -> int:
    """An ``scnet-train`` command of :func:`train_command`'s form run in this process (its ``main``), for the
    uninterrupted runs that trials are compared with: the same weights as a separate process (one thread in
    both), without a process start's ~5 s of imports. Returns the exit status."""
    from scnet.cli.train import main

    assert list(command[1:3]) == ["-m", "scnet.cli.train"], command
    return main(list(command[3:]))


def weights(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (a run folder: its last.pth); ``key="model_ema"``: its EMA weights."""
    path = path / "last.pth" if path.is_dir() else path
    return torch.load(path, map_location="cpu", weights_only=True)[key]


def assert_same_weights(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], what: str = "weights") -> None:
    """Bitwise equality of every tensor (weights and BN statistics); ``what`` names them in the message."""
    assert want.keys() == got.keys(), what
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, f"{what}: {len(different)} of {len(want)} tensors differ, e.g. {different[:3]}"


def stable_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timings."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k in STABLE_METRICS} for line in lines]


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files in a run folder (a finished run must leave none)."""
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))
