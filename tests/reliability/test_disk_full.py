"""A checkpoint that cannot be written (no space left, a file-size limit): the previous checkpoint stays whole,
the run stops with one line naming the file and the cause, and no partial file is left."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scnet.train import checkpoints as ckpt

from .harness import ENV, REPO, assert_same_weights, leftovers, run, run_here, train_command, weights


def test_no_space_left_keeps_the_previous_file(tmp_path):
    """A real ENOSPC: the temporary is a link to /dev/full, which refuses every write."""
    path = tmp_path / "last.pth"
    ckpt.save_atomic({"n": torch.tensor(1)}, path, keep_previous=True)
    ckpt.temporary_path(path).symlink_to("/dev/full")
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        ckpt.save_atomic({"n": torch.arange(100_000)}, path, keep_previous=True)
    assert str(e.value) == f"cannot write checkpoint {path}: [Errno 28] No space left on device"
    assert int(ckpt.load(path)["n"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary, no last.prev.pth


def test_file_size_limit_names_the_cause(tmp_path):
    """RLIMIT_FSIZE (EFBIG) inside torch.save: the cause is the OSError, not torch's "unexpected pos"."""
    path = tmp_path / "last.pth"
    code = (
        "import resource, torch\n"
        "from scnet.train import checkpoints as ckpt\n"
        f"ckpt.save_atomic({{'n': torch.tensor(1)}}, {str(path)!r})\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
        "try:\n"
        f"    ckpt.save_atomic({{'n': torch.arange(100_000)}}, {str(path)!r})\n"
        "except ckpt.CheckpointWriteError as e:\n"
        "    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=ENV)
    assert result.stdout.strip() == f"cannot write checkpoint {path}: [Errno 27] File too large", result.stderr
    assert int(ckpt.load(path)["n"]) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_run_stops_in_one_line_and_resumes_when_space_is_back(demo, reference_run, tmp_path):
    out = tmp_path / "run"
    assert run_here(train_command(demo, out, epochs=1)) == 0
    kept = {name: (out / name).read_bytes() for name in ("last.pth", "last.prev.pth", "best.pth")}
    # Every checkpoint is about the same size: half of one fails the next checkpoint, nothing smaller.
    result = run(train_command(demo, out), preexec_fn=_file_size_limit(len(kept["last.pth"]) // 2))
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("scnet-train:")]
    assert errors == [
        f"scnet-train: error: cannot write checkpoint {out / 'last.pth'}: [Errno 27] File too large; "
        f"the last good checkpoint is {out / 'last.pth'} (untouched; no partial file left)"
    ]
    assert {name: (out / name).read_bytes() for name in kept} == kept
    assert leftovers(out) == []
    # Space is back: the same command finishes the run as if nothing had happened.
    result = run(train_command(demo, out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(weights(reference_run), weights(out))


def test_save_atomic_error_is_one_line(tmp_path: Path):
    """A folder that is gone (a lost mount): one line naming the file."""
    path = tmp_path / "gone" / "last.pth"
    with pytest.raises(ckpt.CheckpointWriteError, match=r"^cannot write checkpoint .*last\.pth: \[Errno 2\]"):
        ckpt.save_atomic({"n": torch.tensor(1)}, path)
