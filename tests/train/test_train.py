"""Training runs on real (tiny) data: resume exactness, preemption, refusal to overwrite, bad input."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch

from scnet.cli.train import main as train_main
from scnet.config import load_config
from scnet.train import train

from ..reliability.harness import (
    ENV,
    QUICKSTART,
    REPO,
    assert_same_weights,
    overrides,
    run,
    stable_metrics,
    train_command,
    weights,
)
from ..utils import read_stderr_until


def _overrides(demo: Path, out: Path, epochs: int = 2) -> list[str]:
    """The settings of the session's reference run (20 images, batch 4: 5 steps an epoch; a step schedule,
    so the lr does not depend on epochs), in this process: no loader workers."""
    return overrides(demo, out, epochs=epochs, workers=0)


@pytest.mark.slow
def test_resume_after_epoch_is_exact(demo, reference_run, tmp_path):
    out = tmp_path / "run"
    train(load_config(QUICKSTART, _overrides(demo, out, epochs=1)))
    first = torch.load(out / "last.pth", weights_only=True)
    assert first["epoch"] == 1 and first["step_in_epoch"] == 0
    train(load_config(QUICKSTART, _overrides(demo, out, epochs=2)), resume="auto")
    assert_same_weights(weights(reference_run), weights(out))
    assert stable_metrics(out) == stable_metrics(reference_run)
    assert (out / "best.pth").is_file() and (out / "config.yaml").is_file()


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_is_exact(demo, reference_run, tmp_path):
    out = tmp_path / "run"
    command = train_command(demo, out, "train.checkpoint_every_steps=0", workers=0)  # only the signal saves
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=REPO, env=ENV)
    seen = read_stderr_until(proc, b"| 2/5", timeout=240)  # tqdm has finished step 2 of epoch 1
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=240)[1]
    assert proc.returncode == 0, (seen + rest).decode()[-2000:]
    assert b"stopped by signal" in rest
    stopped = torch.load(out / "last.pth", weights_only=True)
    assert stopped["epoch"] == 0 and 2 <= stopped["step_in_epoch"] < 5  # mid-epoch
    result = run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(weights(reference_run), weights(out))
    assert stable_metrics(out) == stable_metrics(reference_run)


def test_refuses_to_overwrite_a_run(demo, reference_run, capsys):
    before = sorted(p.name for p in reference_run.iterdir())
    mtime = (reference_run / "last.pth").stat().st_mtime_ns
    assert train_main(["--config", str(QUICKSTART), *_overrides(demo, reference_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a run" in err and "--resume" in err
    assert sorted(p.name for p in reference_run.iterdir()) == before
    assert (reference_run / "last.pth").stat().st_mtime_ns == mtime


def _make_renamed_class(demo: Path, tmp_path: Path) -> Path:
    """The demo set with its first class under another name: 10 classes, not those of the demo's runs."""
    import shutil

    root = tmp_path / "renamed"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("classes.txt"))
    for split in ("train", "val"):
        (root / split / "00_circle").rename(root / split / "00_disc")
    return root


def _make_empty_class(demo: Path, tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(demo, root)
    (root / "classes.txt").unlink()  # without a class list, folders define the classes
    (root / "train" / "zz_empty").mkdir()
    return root


@pytest.mark.parametrize(
    "case,extra,message",
    [
        ("unknown key", ["optim.lrr=0.1"], "did you mean optim.lr"),
        ("wrong type", ["train.epochs=abc"], "train.epochs"),
        ("missing data", ["data.root={tmp}/nowhere"], "data.root: {tmp}/nowhere: no such folder"),
        ("empty class", ["data.root={empty}"], "empty class folder"),
        ("num_classes", ["model.num_classes=7"], "model.num_classes=7"),
        ("image size", ["data.image_size=64"], "minimum of 97 px"),
        ("other architecture", ["model.pretrained={ckpt}"], "does not fit scnet50"),
        (
            "resume other architecture",
            ["--resume={run}/last.pth", "model.name=scnet50_v1d"],
            "does not fit scnet50_v1d",
        ),
        ("resume a weights file", ["--resume={ckpt}"], "not a training checkpoint"),
        (
            "resume other classes",
            ["--resume={run}/last.pth", "data.root={renamed}"],
            "its run trained on 10 classes, the training split of data.root={renamed} has 10 ('00_circle' is missing)",
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(demo, reference_run, tmp_path, capsys, case, extra, message):
    out = tmp_path / "run"
    ckpt = tmp_path / "resnet.pth"
    if "{ckpt}" in extra[0]:
        import timm

        torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), ckpt)
    empty = _make_empty_class(demo, tmp_path) if "{empty}" in extra[0] else None
    renamed = _make_renamed_class(demo, tmp_path) if "{renamed}" in " ".join(extra) else None
    names = dict(tmp=tmp_path, empty=empty, ckpt=ckpt, run=reference_run, renamed=renamed)
    extra = [e.format(**names) for e in extra]
    message = message.format(**names)
    code = train_main(["--config", str(QUICKSTART), *_overrides(demo, out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("scnet-train: error:") and err.count("\n") == 0, err
    assert message in err, err
    assert not out.exists()


@pytest.mark.slow
def test_accumulation_clipping_ema_amp_and_step_checkpoints(demo, tmp_path):
    """The optional paths of the loop run together: 2 accumulation steps, clipping, EMA (evaluated too),
    bf16 autocast, mixup, and a checkpoint every 2 optimizer steps."""
    out = tmp_path / "run"
    cfg = load_config(
        QUICKSTART,
        _overrides(demo, out, epochs=1)
        + [
            "train.accum_steps=2",
            "optim.clip_grad=1.0",
            "train.ema=true",
            "train.amp=bf16",
            "data.mixup=0.2",
            "train.checkpoint_every_steps=2",
        ],
    )
    metrics = train(cfg)
    assert {"top1", "ema_top1", "ema_top5"} <= metrics.keys()
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["global_step"] == 5  # 20 images, micro-batches of 2, 2 per optimizer step
    assert "model_ema" in state and state["epoch"] == 1
