"""A loss that turns NaN/inf: the run stops at that step, or skips up to train.skip_nonfinite such steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from scnet.cli.train import main as train_main
from scnet.config import load_config
from scnet.train import NonFiniteLossError, train

REPO = Path(__file__).parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def _diverging(demo: Path, out: Path, *extra: str) -> list[str]:
    """20 images, batch 4: 5 steps an epoch. A sane first step (warm-up starts at 1e-5), then a learning rate
    of ~1e27 that blows the weights up, so the loss of step 3 is no longer finite. A checkpoint every 2 steps
    (step 2's is the last good one; a skipped step writes none)."""
    return [
        f"data.root={demo}",
        "data.batch_size=4",
        "data.workers=0",
        "data.image_size=100",
        f"output_dir={out}",
        "train.epochs=1",
        "train.tensorboard=false",
        "train.checkpoint_every_steps=2",
        "optim.lr=1e30",
        "schedule.warmup_epochs=1",
        "schedule.warmup_lr=1e-5",
        *extra,
    ]


def test_stops_at_the_first_nonfinite_loss_with_its_step_and_keeps_the_last_checkpoint(demo, tmp_path, capsys):
    out = tmp_path / "run"
    code = train_main(["--config", str(QUICKSTART), *_diverging(demo, out)])
    stderr = capsys.readouterr().err
    assert code == 1, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("scnet-train: error:")]
    assert len(errors) == 1, stderr[-2000:]
    assert "non-finite training loss at epoch 1 step 3 (global step 3)" in errors[0]
    assert f"last good checkpoint: {out / 'last.pth'}" in errors[0] and "train.skip_nonfinite" in errors[0]
    # The checkpoint is the one written after step 2, readable, and holds no NaN/inf: the bad step never
    # reached the weights or the BN statistics.
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["global_step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (out / "metrics.jsonl").exists()  # the epoch never finished


@pytest.fixture(scope="module")
def skipping_run(demo, tmp_path_factory) -> Path:
    """Steps 3-5 diverge and 3 skips are allowed: the epoch ends."""
    out = tmp_path_factory.mktemp("skipping") / "run"
    train(load_config(QUICKSTART, _diverging(demo, out, "train.skip_nonfinite=3")))
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_skips_up_to_n_nonfinite_steps_and_counts_them(skipping_run):
    """Steps 3-5 diverge: with 3 allowed, the epoch ends with the weights and BN statistics of step 2."""
    out = skipping_run
    metrics = _metrics(out)
    assert len(metrics) == 1 and metrics[0]["nonfinite_steps"] == 3
    assert math.isfinite(metrics[0]["train_loss"])  # the mean over the two finite steps
    end = torch.load(out / "last.pth", weights_only=True)  # written at the epoch's end
    # Skipped steps write no checkpoint: the one before the epoch's end (kept as last.prev.pth) is step 2's.
    step_2 = torch.load(out / "last.prev.pth", weights_only=True)
    assert (end["global_step"], step_2["global_step"]) == (5, 2)
    for key, want in step_2["model"].items():  # BN statistics and their counters included
        assert torch.equal(end["model"][key], want), key


def test_stops_when_more_steps_diverge_than_allowed(demo, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1 step 4 .*more than train\.skip_nonfinite=1"):
        train(load_config(QUICKSTART, _diverging(demo, out, "train.skip_nonfinite=1")))
    assert torch.load(out / "last.pth", weights_only=True)["global_step"] == 2


def test_a_stopped_run_resumed_with_skips_allowed_ends_as_one_that_skipped_from_the_start(demo, tmp_path, skipping_run):
    """What the stop message suggests: set train.skip_nonfinite and resume. Every step the resumed process runs
    (3-5) is skipped, so no step of its first epoch is applied; the epoch still ends, and its metrics (the lr the
    schedule reached, the loss of steps 1-2, 3 skipped steps) and weights are those of the run that skipped them
    from the start."""
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"at epoch 1 step 3 "):
        train(load_config(QUICKSTART, _diverging(demo, out)))
    train(load_config(QUICKSTART, _diverging(demo, out, "train.skip_nonfinite=3")), resume="auto")
    times = {"epoch_time", "images_per_second", "data_wait"}
    got, want = _metrics(out), _metrics(skipping_run)
    assert [{k: v for k, v in m.items() if k not in times} for m in got] == [
        {k: v for k, v in m.items() if k not in times} for m in want
    ]
    assert isinstance(got[0]["lr"], float)
    end, reference = (torch.load(d / "last.pth", weights_only=True) for d in (out, skipping_run))
    for key, value in reference["model"].items():
        assert torch.equal(end["model"][key], value), key
