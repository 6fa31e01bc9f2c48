"""A long run does not leak: 2,000 optimizer steps on tiny data, the trainer's resident memory sampled from
outside (/proc) every second; after warm-up it must stay flat. Run with --long; the figures go to the report."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from scnet.data.demo import make_demo

from .harness import ENV, REPO, train_command

STEPS = 2000
GROWTH_LIMIT_MB = 64  # after warm-up; a leak of even 32 KB a step would exceed it


def _vmrss_mb(pid: int) -> float:
    """Resident memory of one process in MiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@pytest.mark.long
def test_two_thousand_steps_keep_memory_flat(module_tmp, tmp_path, request):
    # 10 classes x 20 images at batch 4: 50 steps an epoch, 40 epochs, validation every 5.
    data = make_demo(module_tmp / "soak-data", num_classes=10, train_per_class=20, val_per_class=2, progress=False)
    out = tmp_path / "run"
    command = train_command(data, out, epochs=STEPS // 50) + ["train.eval_every=5", "train.checkpoint_every_steps=0"]
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, float, float]] = []  # (seconds, main MiB, with workers MiB)
    started = time.monotonic()
    while proc.poll() is None:
        main = _vmrss_mb(proc.pid)
        workers = sum(_vmrss_mb(c) for c in _children(proc.pid))
        samples.append((time.monotonic() - started, main, main + workers))
        time.sleep(1.0)
    assert proc.returncode == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == STEPS // 50
    # Warm-up: the first 10% of the run (allocator pools, the loader's prefetch, the first evaluation).
    steady = [s for s in samples if s[0] >= 0.1 * samples[-1][0] and s[1] > 0]
    first, last = steady[0], steady[-1]
    with_workers = [s for s in steady if s[2] > s[1]]  # while the loader workers ran (they exit at the end)
    peak = max(s[1] for s in steady)
    result = {
        "test": "soak",
        "steps": STEPS,
        "seconds": round(samples[-1][0]),
        "main_rss_mb_after_warmup": round(first[1], 1),
        "main_rss_mb_end": round(last[1], 1),
        "main_rss_mb_peak": round(peak, 1),
        "with_workers_mb_after_warmup": round(first[2], 1),
        "with_workers_mb_end": round(with_workers[-1][2], 1) if with_workers else None,
        "samples": len(samples),
    }
    report = request.config.getoption("--reliability-report")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps(result) + "\n")
    print(result)
    assert last[1] - first[1] < GROWTH_LIMIT_MB, result
    assert peak - first[1] < GROWTH_LIMIT_MB, result
