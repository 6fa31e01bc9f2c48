"""A process of a 2-process run dies (kill -9) or hangs (SIGSTOP): with torchrun's restarts the run finishes
from its last checkpoint with the weights of an uninterrupted run; without, the survivor stops with one line
within ``train.dist_timeout`` instead of hanging."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .harness import ENV, KILLED, REPO, assert_same_weights, leftovers, overrides, run, weights
from .harness import QUICKSTART as CONFIG

TIMEOUT = 10  # train.dist_timeout of these runs, in seconds


def _train_args(demo: Path, out: Path, *extra: str) -> list[str]:
    # No loader workers: 2 ranks already share the 2 cores of CI.
    return ["--config", str(CONFIG), *overrides(demo, out, workers=0), *extra, "--resume", "auto"]


def _torchrun(demo: Path, out: Path, restarts: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        f"--max-restarts={restarts}",
        "-m",
        "scnet.cli.train",
        *_train_args(demo, out, *extra),
    ]


@pytest.fixture(scope="module")
def reference2_run(demo, module_tmp) -> tuple[Path, str]:
    """The uninterrupted 2-process run (under torchrun's default store, with restarts allowed) and its stderr."""
    out = module_tmp / "reference2"
    result = run(_torchrun(demo, out, 1))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stderr


@pytest.fixture(scope="module")
def reference2(reference2_run) -> Path:
    return reference2_run[0]


@pytest.mark.slow
def test_torchrun_restarts_on_the_shared_store_are_warned_about(reference2_run):
    """torchrun's default store breaks its restarts (pytorch/pytorch#135712): rank 0 says once how to avoid it."""
    stderr = reference2_run[1]
    warnings = [line for line in stderr.splitlines() if "pytorch/pytorch#135712" in line]
    assert len(warnings) == 1 and "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in warnings[0], stderr[-3000:]


@pytest.mark.slow
def test_two_processes_write_and_print_once(reference2_run):
    """Rank 0 alone writes metrics.jsonl and prints the epoch lines; the checkpoint keeps both ranks' RNG states."""
    out, stderr = reference2_run
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert stderr.count("epoch=1 ") == 1 and stderr.count("epoch=2 ") == 1
    state = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])  # seeded seed + rank


@pytest.mark.slow
def test_torchrun_restarts_a_dead_worker_from_the_last_checkpoint(demo, reference2, tmp_path):
    out = tmp_path / "run"
    # Rank 1 kills itself at its 7th step (global step 7; the last checkpoint is step 6's). The restarted
    # workers resume at step 6 and take 4 more steps, so the same fault cannot fire again.
    # torchrun must not share its rendezvous store with the workers for restarts to work (pytorch#135712).
    env = ENV | {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    result = run(_torchrun(demo, out, 1), fault="step:7:rank=1", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pytorch/pytorch#135712" not in result.stderr
    assert "Signals.SIGKILL" in result.stderr or "exitcode: -9" in result.stderr, result.stderr[-3000:]
    assert_same_weights(weights(reference2), weights(out))
    assert leftovers(out) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(demo: Path, out: Path, fault: str | None = None) -> list[subprocess.Popen]:
    """Two processes started as a scheduler does (srun, one per node): no torchrun agent watches them."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = ENV | {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
        }
        if fault:
            env["SCNET_FAULT"] = fault
        command = [sys.executable, "-m", "scnet.cli.train", *_train_args(demo, out, f"train.dist_timeout={TIMEOUT}")]
        procs.append(
            subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        )
    return procs


def _wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, f"{path} never appeared"
        assert all(p.poll() is None for p in procs), "a process ended early"
        time.sleep(0.2)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("scnet-train:")]


@pytest.mark.slow
def test_survivor_of_a_dead_peer_stops_in_one_line(demo, tmp_path):
    out = tmp_path / "run"
    rank0, rank1 = _start_ranks(demo, out, fault="step:3:rank=1")
    assert rank1.wait(timeout=300) == KILLED
    started = time.monotonic()
    err = rank0.communicate(timeout=TIMEOUT + 60)[1]
    assert rank0.returncode == 1, err[-3000:]
    assert time.monotonic() - started < TIMEOUT + 60
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("scnet-train: error: rank 0 of 2: lost the other processes of the run (")
    assert f"train.dist_timeout={TIMEOUT} s; last checkpoint: {out / 'last.pth'}; restart" in lines[0]


@pytest.mark.slow
def test_survivor_of_a_hung_peer_stops_after_the_timeout(demo, tmp_path):
    out = tmp_path / "run"
    procs = _start_ranks(demo, out)
    rank0, rank1 = procs
    try:
        _wait_for(out / "last.pth", procs)  # step 2's checkpoint: both ranks are in the loop
        os.kill(rank1.pid, signal.SIGSTOP)  # alive, silent: what a hung GPU or a frozen node looks like
        started = time.monotonic()
        err = rank0.communicate(timeout=TIMEOUT + 120)[1]
        waited = time.monotonic() - started
    finally:
        rank1.kill()
        rank1.communicate()
    assert rank0.returncode == 1, err[-3000:]
    assert TIMEOUT - 1 < waited < TIMEOUT + 60, waited
    lines = _error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("scnet-train: error: rank 0 of 2: lost the other processes of the run (Timed out")


@pytest.mark.parametrize(
    "text",
    [
        "Application timeout caused pair closure",  # gloo, a SIGSTOPped peer during DDP's buffer broadcast
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1234: Connection reset by peer",
    ],
)
def test_what_gloo_says_about_a_lost_peer_becomes_the_one_line(tmp_path, text):
    """The texts gloo raised in these tests' runs (plain RuntimeErrors) are read as a lost peer."""
    from scnet.runtime.distributed import DistInfo, PeerLostError, peer_lost

    info = DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    lost = peer_lost(RuntimeError(text), info, TIMEOUT, tmp_path / "last.pth")
    assert isinstance(lost, PeerLostError)
    assert str(lost).startswith("rank 1 of 2: lost the other processes of the run (")
    assert "no checkpoint written yet" in str(lost)
    assert peer_lost(RuntimeError(text), DistInfo(0, 1, 0, torch.device("cpu")), TIMEOUT, tmp_path / "last.pth") is None
    assert peer_lost(RuntimeError("CUDA out of memory"), info, TIMEOUT, tmp_path / "last.pth") is None
