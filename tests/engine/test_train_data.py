"""The trainer's data and schedule, through the real CLI: where the data comes from (a path that exists, or the
built-in demo set by name), and a warm-up as long as the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.scheduler import create_scheduler_v2

from scnet.cli.eval import main as eval_main
from scnet.cli.train import main as train_main
from scnet.data.demo import make_demo

REPO = Path(__file__).parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _overrides(root: Path | str, out: Path, *extra: str) -> list[str]:
    """20 train images at batch 4: 5 steps; the quickstart's schedule (cosine, 1 warm-up epoch) is kept."""
    return [
        f"data.root={root}",
        "data.batch_size=4",
        "data.workers=0",
        f"output_dir={out}",
        "train.epochs=1",
        "train.deterministic=true",
        "train.tensorboard=false",
        *extra,
    ]


def _metrics(out: Path) -> dict:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def _eval(capsys, tmp_path: Path, *args) -> dict:
    """scnet-eval (in-process) at the trainer's batch size; returns its JSON."""
    out_json = tmp_path / f"eval{len(list(tmp_path.glob('eval*.json')))}.json"
    code = eval_main([*map(str, args), "--workers", "0", "--batch-size", "4", "--json", str(out_json)])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(out_json.read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    return make_demo(root, num_classes=10, train_per_class=2, val_per_class=1, progress=False)


# --------------------------------------------------------------------------------------------------
# 1. A data path is never invented


def test_mistyped_data_root_is_one_line_and_creates_nothing(tmp_path):
    typed = tmp_path / "imagnet"
    cmd = [sys.executable, "-m", "scnet.cli.train", "--config", str(QUICKSTART)]
    proc = subprocess.run(
        [*cmd, f"data.root={typed}", f"output_dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # where data/demo would be drawn, if anything were
        env=ENV,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"scnet-train: error: data.root: {typed}: no such folder\n"
    assert list(tmp_path.iterdir()) == []  # no images at the typed path, no output_dir, no data/demo


def test_demo_by_name_is_the_set_at_data_demo(tmp_path, monkeypatch, capsys):
    """`data.root=demo` trains on <cwd>/data/demo, completing it with its own sizes (not the default 1,200),
    and `scnet-eval --data demo` (or data/demo, as the README writes it) evaluates the same set."""
    monkeypatch.chdir(tmp_path)
    folder = make_demo(tmp_path / "data/demo", num_classes=10, train_per_class=2, val_per_class=1, progress=False)
    victim = sorted((folder / "val").rglob("*.JPEG"))[3]
    original = victim.read_bytes()
    victim.unlink()  # as if an earlier drawing had been interrupted
    assert train_main(["--config", str(QUICKSTART), *_overrides("demo", Path("runs/demo"))]) == 0
    err = capsys.readouterr().err
    assert err.count(f"data.root=demo: the built-in demo set, at {tmp_path / 'data' / 'demo'}\n") == 1
    assert victim.read_bytes() == original
    assert len(list((folder / "train").rglob("*.JPEG"))) == 20 and len(list((folder / "val").rglob("*.JPEG"))) == 10
    trained = _metrics(tmp_path / "runs/demo")
    by_name = _eval(capsys, tmp_path, "--checkpoint", "runs/demo/best.pth", "--data", "demo")
    by_path = _eval(capsys, tmp_path, "--checkpoint", "runs/demo/best.pth", "--data", "data/demo")
    assert (by_name["images"], by_name["top1"]) == (by_path["images"], by_path["top1"]) == (10, trained["top1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "eval0.json", "eval1.json", "runs"]


# --------------------------------------------------------------------------------------------------
# 2. A warm-up as long as the run


def _lr_of_each_step(peak: float, warmup_lr: float, steps: int) -> list[float]:
    """The lr each optimizer step uses under timm's cosine schedule with 1 warm-up epoch of ``steps`` steps,
    stepped as the trainer steps it (step_update after each step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=1,
        warmup_epochs=1,
        warmup_lr=warmup_lr,
        step_on_epochs=False,
        updates_per_epoch=steps,
    )
    used = []
    for step in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(num_updates=step + 1)
    return used


def test_warmup_as_long_as_the_run_warns_once(demo, tmp_path, capsys):
    assert train_main(["--config", str(QUICKSTART), *_overrides(demo, tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("scnet-train: warning:")]
    assert len(warnings) == 1, err
    peak = 0.1 * 4 / 256  # the quickstart's lr per 256, at batch 4
    used = _lr_of_each_step(peak, warmup_lr=1e-5, steps=5)
    assert max(used) < peak  # timm itself: the peak is never reached
    assert warnings[0].startswith("scnet-train: warning: schedule.warmup_epochs=1 >= train.epochs=1: ")
    assert f"from 1e-05 to {used[-1]:.3g} at the last step, below the peak {peak:.3g}" in warnings[0]
    assert "cosine decay never starts" in warnings[0]
    assert _metrics(tmp_path / "run")["epoch"] == 1
