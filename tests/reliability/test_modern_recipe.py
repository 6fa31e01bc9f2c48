"""kill -9 and resume under the modern recipe, with gradient accumulation and bf16 autocast: every random
source it adds (mixup/cutmix from NumPy, RandAugment in the loader workers, random erasing, drop-path) and
every piece of state (EMA weights, the accumulation within a step) must come back exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .harness import KILLED, REPO, assert_same_weights, leftovers, run, run_here, stable_metrics, weights

MODERN = REPO / "configs" / "_base_" / "recipe_modern.yaml"


def modern_command(data: Path, out: Path) -> list[str]:
    """The modern recipe file as written, on the tiny demo set: 20 images at batch 4 in micro-batches of 2 (5
    steps an epoch, 10 micro-batches), one warm-up epoch then the cosine, a checkpoint every 2 steps."""
    return [
        sys.executable,
        "-m",
        "scnet.cli.train",
        "--config",
        str(MODERN),
        f"data.root={data}",
        "model.num_classes=10",
        "data.image_size=100",
        "data.batch_size=4",
        "data.workers=2",
        f"output_dir={out}",
        "train.epochs=2",
        "train.accum_steps=2",
        "train.amp=bf16",
        "train.ema_decay=0.9",  # the recipe's 0.9998 would keep the EMA at its start for these 10 steps
        "schedule.warmup_epochs=1",
        "train.deterministic=true",
        "train.tensorboard=false",
        "train.checkpoint_every_steps=2",
        "train.log_every=1",
        "--resume",
        "auto",
    ]


# N = the N-th pass of the new process. Checkpoints at global steps 2, 4 and at the epoch ends (5, 10).
# (A kill during validation, as test_kills.py has, would add nothing this recipe changes.)
CHAIN = (
    "step:3",  # step 3's two micro-batches done, the weights not yet updated; resumes from step 2 (mid-epoch)
    "epoch_end:1",  # epoch 1's best.pth and last.pth written, its metrics.jsonl line not yet
)


@pytest.mark.slow
def test_modern_recipe_killed_twice_ends_as_if_never_killed(demo, tmp_path):
    straight = tmp_path / "straight"
    assert run_here(modern_command(demo, straight)) == 0
    out = tmp_path / "run"
    for fault in CHAIN:
        result = run(modern_command(demo, out), fault=fault)
        assert result.returncode == KILLED, f"{fault} did not fire: {result.stderr[-2000:]}"
    result = run(modern_command(demo, out))
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("model", "model_ema"):
        assert_same_weights(weights(straight, key), weights(out, key), f"last.pth {key}")
        assert_same_weights(weights(straight / "best.pth", key), weights(out / "best.pth", key), f"best.pth {key}")
    metrics = stable_metrics(out)
    assert metrics == stable_metrics(straight)
    assert [m["epoch"] for m in metrics] == [1, 2] and all("ema_top1" in m for m in metrics)
    assert leftovers(out) == []
