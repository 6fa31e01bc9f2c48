"""kill -9 at exact moments of a real run (fault injection: ``SCNET_FAULT``), then ``--resume auto``.

Every trial must end with the final weights (``torch.equal``), best.pth and metrics.jsonl of the run that was
never interrupted, and leave no temporary file behind.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .harness import (
    ENV,
    KILLED,
    REPO,
    assert_same_weights,
    leftovers,
    run,
    stable_metrics,
    train_command,
    weights,
)


def _missing_last(out: Path) -> None:
    assert not (out / "last.pth").exists() and (out / "last.prev.pth").is_file()
    assert (out / ".last.pth.tmp").is_file()  # written, never renamed: the resume must ignore it


def _no_epoch_line(out: Path) -> None:
    assert (out / "last.pth").is_file() and not (out / "metrics.jsonl").exists()


# One run killed six times in a row, each time at another kind of moment (N = the N-th pass of the new
# process). 5 steps an epoch, checkpoints at global steps 2, 4, 6, 8 and at the epoch ends (5, 10).
CHAIN = [
    ("step:3", None),  # step 3's backward done, weights not yet updated; resumes from step 2
    ("checkpoint_between_renames:2", _missing_last),  # epoch 1's last.pth moved away, the new one not in place
    ("eval:2", None),  # inside epoch 1's validation (from step 4's last.prev.pth)
    ("epoch_end:1", _no_epoch_line),  # epoch 1's checkpoint written, its metrics.jsonl line not yet
    ("data:3", None),  # the main process waits for its 3rd micro-batch of epoch 2 from the loader workers
    ("checkpoint_written:2", None),  # a checkpoint's temporary written and synced, not renamed
]


def _resumed_without_last(result, out: Path) -> None:
    """The run after a kill between the renames says in one line where it resumes from."""
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {out / 'last.pth'}: missing; resuming from the previous checkpoint, {out / 'last.prev.pth'}"
    ], result.stderr[-3000:]


@pytest.mark.slow
def test_a_run_killed_six_times_ends_as_if_never_killed(demo, reference_run, tmp_path):
    out = tmp_path / "run"
    last_missing = False
    for fault, check in CHAIN:
        result = run(train_command(demo, out), fault=fault)
        assert result.returncode == KILLED, f"{fault} did not fire: {result.stderr[-2000:]}"
        if last_missing:
            _resumed_without_last(result, out)
        if check is not None:
            check(out)
        last_missing = check is _missing_last
    result = run(train_command(demo, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from the previous checkpoint" not in result.stderr  # the last kill left a good last.pth
    assert_same_weights(weights(reference_run), weights(out))
    assert_same_weights(weights(reference_run / "best.pth"), weights(out / "best.pth"))
    assert stable_metrics(out) == stable_metrics(reference_run)
    assert leftovers(out) == []


# ------------------------------------------------------------------------------------------------------
# The long trials (--long): seeded random moments, one kill each.

POINTS = ("data", "step", "eval", "checkpoint_written", "checkpoint_between_renames", "epoch_end")
# How often each point is passed in the 2-epoch run: 10 micro-batches, 10 steps, 2 x 3 val batches,
# 7 checkpoints (4 mid-epoch, 2 last.pth + at least 1 best.pth), 5 renames of an existing last.pth, 2 epoch ends.
PASSES = {"data": 10, "step": 10, "eval": 6, "checkpoint_written": 7, "checkpoint_between_renames": 5, "epoch_end": 2}
TRIALS = 12


def trial_plan(seed: int, duration: float) -> list[tuple[str, str | float]]:
    """``TRIALS`` kills, seeded: ("fault", "NAME:N") at a random pass of a random point, or ("time", seconds)
    for a kill -9 from outside after a random delay within the run's duration (it lands wherever the run is)."""
    rng = random.Random(seed)
    plan: list[tuple[str, str | float]] = []
    for _ in range(TRIALS):
        if rng.random() < 0.25:
            plan.append(("time", round(rng.uniform(1.0, duration), 2)))
        else:
            point = rng.choice(POINTS)
            plan.append(("fault", f"{point}:{rng.randint(1, PASSES[point])}"))
    return plan


@pytest.mark.long
def test_random_kills(demo, reference_run, tmp_path, request):
    seed = request.config.getoption("--kill-seed")
    started = time.monotonic()
    run(train_command(demo, tmp_path / "timed"))  # how long one uninterrupted run takes here
    duration = time.monotonic() - started
    outcomes = []
    for i, (kind, what) in enumerate(trial_plan(seed, duration)):
        out = tmp_path / f"trial{i}"
        t0 = time.monotonic()
        if kind == "fault":
            killed = run(train_command(demo, out), fault=what).returncode == KILLED
        else:
            proc = subprocess.Popen(
                train_command(demo, out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                proc.wait(timeout=what)
                killed = False  # finished before the kill
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed = True
        state = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        result = run(train_command(demo, out))
        assert result.returncode == 0, f"trial {i} ({kind} {what}): {result.stderr[-3000:]}"
        assert_same_weights(weights(reference_run), weights(out))
        assert_same_weights(weights(reference_run / "best.pth"), weights(out / "best.pth"))
        assert stable_metrics(out) == stable_metrics(reference_run)
        assert leftovers(out) == []
        outcomes.append(
            {"trial": i, "kill": kind, "at": what, "killed": killed, "left": state, "seconds": time.monotonic() - t0}
        )
    report = request.config.getoption("--reliability-report")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"test": "random_kills", "seed": seed, "trials": outcomes}) + "\n")
    assert all(o["killed"] for o in outcomes if o["kill"] == "fault")
