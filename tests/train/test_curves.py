"""The picture at the end of a run: curves.png drawn from metrics.jsonl (loss and accuracy by epoch), and without
matplotlib (an optional extra) a run that still succeeds, with one line saying how to get the figure."""

from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
import yaml
from PIL import Image

from scnet.cli.train import main as train_main
from scnet.viz import CURVES_INCHES, DPI, save_curves_figure

from ..reliability.harness import run, train_command

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_EXTRA = "pip install 'scnet-pytorch[plot]'"
# scnet-train in a process where `import matplotlib` fails, as where the plot extra is not installed.
WITHOUT_MATPLOTLIB = (
    "import sys; sys.modules['matplotlib'] = None; from scnet.cli.train import main; sys.exit(main(sys.argv[1:]))"
)


def _line(epoch: int, loss: float, **extra) -> dict:
    return {"epoch": epoch, "train_loss": loss, "lr": 0.003 / epoch, "epoch_time": 30.0, **extra}


def test_curves_from_crafted_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    lines = [
        _line(1, 2.3, top1=20.0, top5=60.0),
        _line(2, 2.0),  # validation skipped this epoch (train.eval_every=2): no accuracy point, still a loss point
        _line(3, math.nan, top1=55.0, top5=95.0, ema_top1=50.0),  # a NaN loss (every step skipped): left out
        _line(4, 1.4, top1=81.5, top5=99.0, ema_top1=80.0),
        {"preempted": True},  # not an epoch's line: ignored
    ]
    path = save_curves_figure(lines, tmp_path / "sub" / "curves.png", title="crafted", chance=10.0)
    assert path == tmp_path / "sub" / "curves.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (CURVES_INCHES[0] * DPI, CURVES_INCHES[1] * DPI)
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temporary left beside it
    assert save_curves_figure([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_a_finished_run_draws_its_curves_or_says_how_in_one_line(demo, reference_run, tmp_path, capsys):
    """Without matplotlib the run succeeds with one line naming the plot extra; the command it names (the same
    scnet-train with --resume auto, on the finished run) then draws the figure and trains nothing."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pth", "metrics.jsonl", "config.yaml"):
        shutil.copy(reference_run / name, out / name)
    # train.amp: auto was resolved at the start: what the run used is what its config.yaml says.
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["amp"] in ("bf16", "none")
    stamp = (out / "last.pth").stat().st_mtime_ns
    command = train_command(demo, out)
    assert command[1:3] == ["-m", "scnet.cli.train"]

    result = run([sys.executable, "-c", WITHOUT_MATPLOTLIB, *command[3:]], timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if PLOT_EXTRA in line]
    assert len(said) == 1 and said[0].startswith(f"curves: {out / 'curves.png'} not drawn: "), result.stderr
    assert "--resume auto" in said[0]
    assert not (out / "curves.png").exists() and not list(out.glob(".*.tmp"))

    capsys.readouterr()
    assert train_main(command[3:]) == 0
    assert f"curves: {out / 'curves.png'} (loss and accuracy by epoch)" in capsys.readouterr().err
    assert (out / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    assert (out / "last.pth").stat().st_mtime_ns == stamp  # nothing trained, nothing saved
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
