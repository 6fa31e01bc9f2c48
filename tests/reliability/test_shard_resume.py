"""Mid-epoch resume on WebDataset-style shards is exact, as on image folders: a shard run killed twice
mid-epoch (its loader workers at different points of their streams) ends with the uninterrupted run's weights."""

from __future__ import annotations

import pytest
import torch

from scnet.data.shards import make_shards

from .harness import KILLED, assert_same_weights, leftovers, run, run_here, stable_metrics, train_command, weights

# 20 images in 5 shards, 2 loader workers with 10 each: 4 batches of 4 an epoch (each worker drops 2).
# Checkpoints at global steps 3 (the next batch comes from worker 1) and 6, and at the epoch ends (4, 8).
EXTRA = ("train.checkpoint_every_steps=3",)
# Killed at global steps 4 and 7; the checkpoints they leave: (epoch, step in epoch) = (0, 3) and (1, 2).
CHAIN = (("step:4", (0, 3)), ("step:4", (1, 2)))


@pytest.mark.slow
def test_shards_resume_mid_epoch_exactly(demo, module_tmp, tmp_path):
    shards = module_tmp / "shards"
    make_shards(demo, shards, shard_size=4, progress=False)
    straight = tmp_path / "straight"
    assert run_here(train_command(shards, straight, *EXTRA)) == 0
    out = tmp_path / "run"
    for fault, (epoch, step) in CHAIN:
        result = run(train_command(shards, out, *EXTRA), fault=fault)
        assert result.returncode == KILLED, f"{fault} did not fire: {result.stderr[-2000:]}"
        state = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
        assert (state["epoch"], state["step_in_epoch"]) == (epoch, step)
        assert state["shard_positions"][0]["batches"] == step  # where the loader workers had got to
    result = run(train_command(shards, out, *EXTRA))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(weights(straight), weights(out))
    assert stable_metrics(out) == stable_metrics(straight)
    assert leftovers(out) == []
