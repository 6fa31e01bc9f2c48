"""A damaged last checkpoint (as after a disk failure): --resume auto says so and resumes from the previous one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from scnet.cli.train import main as train_main
from scnet.config import load_config
from scnet.train import checkpoints as ckpt
from scnet.train import train

from ..reliability.harness import QUICKSTART, assert_same_weights, overrides, weights


def _overrides(demo: Path, out: Path, epochs: int) -> list[str]:
    """The session reference run's settings (5 steps an epoch, a checkpoint at steps 2 and 4 and at the
    epoch's end), in this process."""
    return overrides(demo, out, epochs=epochs, workers=0)


@pytest.fixture(scope="module")
def one_epoch(demo, module_tmp) -> Path:
    """Epoch 1 of the reference run's settings, finished: last.pth (epoch end) and last.prev.pth (step 4)."""
    out = module_tmp / "one_epoch"
    train(load_config(QUICKSTART, _overrides(demo, out, epochs=1)))
    assert ckpt.load(ckpt.previous_path(out / "last.pth"))["global_step"] == 4
    return out


def _copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A test's own copy of a run folder, to damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # random bytes of the same size
        path.write_bytes(os.urandom(len(data)))


def test_save_atomic_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pth"
    ckpt.save_atomic({"n": torch.tensor(1)}, path, keep_previous=True)
    assert not ckpt.previous_path(path).exists()  # nothing before the first
    ckpt.save_atomic({"n": torch.tensor(2)}, path, keep_previous=True)
    assert int(ckpt.load(path)["n"]) == 2 and int(ckpt.load(ckpt.previous_path(path))["n"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pth", "last.pth"]  # no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "empty", "random"])
def test_resume_auto_falls_back_to_the_previous_checkpoint(demo, reference_run, one_epoch, tmp_path, capsys, how):
    """Epoch 1 ends; its last.pth is damaged; the resume starts from step 4's checkpoint, and (deterministic on
    CPU) the run still ends with exactly the weights of an uninterrupted one."""
    out = _copy_of(one_epoch, tmp_path)
    _damage(out / "last.pth", how)
    capsys.readouterr()
    assert train_main(["--config", str(QUICKSTART), *_overrides(demo, out, epochs=2), "--resume", "auto"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert f"{out / 'last.pth'}: cannot read checkpoint" in warnings[0]
    assert f"resuming from the previous checkpoint, {out / 'last.prev.pth'}" in warnings[0]
    assert_same_weights(weights(reference_run), weights(out))
    # Epoch 1 was redone from step 4: its metrics line is there once, not twice.
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_no_good_checkpoint_left_is_one_line_and_fails(demo, one_epoch, tmp_path, capsys):
    out = _copy_of(one_epoch, tmp_path)
    _damage(out / "last.pth", "empty")
    _damage(ckpt.previous_path(out / "last.pth"), "truncated")
    capsys.readouterr()
    code = train_main(["--config", str(QUICKSTART), *_overrides(demo, out, epochs=2), "--resume", "auto"])
    err = capsys.readouterr().err.strip()
    assert code == 2  # RELIABILITY.md: no readable checkpoint is a one-line error with exit status 2
    assert err.count("\n") == 0, err
    assert "last.pth: cannot read checkpoint" in err and "last.prev.pth: cannot read checkpoint" in err
    assert err.endswith("no good checkpoint left to resume from")
