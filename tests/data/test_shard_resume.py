"""Mid-epoch resume on tar shards: real shards, real random augmentation, real DataLoaders (workers 0 and 2).

A run stopped after k batches and resumed from the ShardPosition of those k batches must deliver exactly the
batches the uninterrupted epoch delivered after them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scnet.data.loader import Batch, build_loader
from scnet.data.shards import ShardDataset, ShardError, ShardPosition, make_shards
from scnet.data.transforms import train_transform

from .images import make_tree

# 41 samples in 7 shards (6 x 6 + 5). Two workers: their shards hold 23 and 18 samples in EPOCH, their quotas are
# 21 and 20; batch size 3 gives them 7 and 6 batches (the loader passes over the one done first), batch size 4
# 5 batches each, the second worker's last one read on its second time round its shards.
COUNTS = {"a": 11, "b": 10, "c": 10, "d": 10}
NUM = sum(COUNTS.values())
EPOCH = 1


def _shards(root: Path, bad: bool) -> Path:
    make_tree(root / "data" / "train", COUNTS, size=(40, 32), seed=3)
    if bad:  # a truncated JPEG: decode_rgb refuses it, "replace" puts the next sample in its place
        victim = root / "data" / "train" / "b" / "b_4.JPEG"
        victim.write_bytes(victim.read_bytes()[:200])
    make_shards(root / "data", root / "shards", shard_size=6, splits=["train"], progress=False)
    return root / "shards" / "train"


@pytest.fixture(scope="module")
def folders(module_tmp) -> dict[bool, Path]:
    """Shards without and with a bad sample."""
    return {bad: _shards(module_tmp / f"bad{int(bad)}", bad) for bad in (False, True)}


def dataset(folder: Path, rank: int = 0, world_size: int = 1, equal: bool = True) -> ShardDataset:
    return ShardDataset(
        folder,
        transform=train_transform(16, scale=(0.2, 1.0)),
        shuffle=True,
        buffer_size=5,
        seed=11,
        rank=rank,
        world_size=world_size,
        equal_per_rank=equal,
    )


def epoch_batches(ds: ShardDataset, workers: int, batch_size: int, state: dict | None = None):
    """The batches of EPOCH through a fresh DataLoader, resumed at ``state``; and the state after each batch."""
    loader = build_loader(ds, batch_size=batch_size, workers=workers, train=True, pin_memory=False)
    pos = ShardPosition(ds.batch_order(workers, batch_size, EPOCH), workers, state)
    ds.set_epoch(EPOCH, pos.skip, pos.next_worker)
    batches, states = [], []
    for batch in loader:
        pos.update(len(batch.images), len(batch.replaced), len(batch.skipped))
        batches.append(batch)
        states.append(pos.state_dict())
    return batches, states


def assert_same(got: list[Batch], want: list[Batch]) -> None:
    assert len(got) == len(want)
    for j, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g.images, w.images) and torch.equal(g.labels, w.labels), f"batch {j}"
        assert g.replaced == w.replaced, f"batch {j}"


@pytest.mark.slow
@pytest.mark.parametrize("bad", [False, True], ids=["good", "bad"])
@pytest.mark.parametrize(("workers", "batch_size"), [(0, 4), (2, 3), (2, 4)])
def test_resume_after_k_batches_is_exact(folders, workers, batch_size, bad, tmp_path):
    ds = dataset(folders[bad])
    full, states = epoch_batches(ds, workers, batch_size)
    assert len(full) == ds.rank_num_batches(workers, batch_size) > 3
    assert sum(len(b.images) for b in full) == len(full) * batch_size
    replaced = [name for b in full for name in b.replaced]
    assert len(replaced) == (1 if bad else 0)
    if bad:
        assert replaced[0].endswith("b__b_4")
    image = torch.randint(0, 256, (3, 32, 40), dtype=torch.uint8)
    assert not torch.equal(ds.transform(image), ds.transform(image))  # the augmentation is random...
    again, _ = epoch_batches(dataset(folders[bad]), workers, batch_size)
    assert_same(again, full)  # ...and seeded per sample: the epoch is reproducible

    for k in range(len(full) + 1):  # stopped after k batches
        state = {"batches": 0, "skip": [[0, 0]] * max(workers, 1)} if k == 0 else states[k - 1]
        torch.save({"shard_position": state}, tmp_path / "ckpt.pth")  # a checkpoint holds plain ints and lists
        state = torch.load(tmp_path / "ckpt.pth", weights_only=True)["shard_position"]
        resumed, after = epoch_batches(dataset(folders[bad]), workers, batch_size, state)
        assert_same(full[:k] + resumed, full)
        assert after[-1:] == states[-1:] or k == len(full)  # the position goes on counting


def test_resume_twice_and_on_persistent_workers(folders):
    """A resumed run stopped again resumes exactly; set_epoch's skip reaches workers that persist."""
    folder, workers, batch_size = folders[True], 2, 3
    full, states = epoch_batches(dataset(folder), workers, batch_size)
    first, after_first = epoch_batches(dataset(folder), workers, batch_size, states[2])
    again, _ = epoch_batches(dataset(folder), workers, batch_size, after_first[4])
    assert_same(full[:3] + first[:5] + again, full)

    ds = dataset(folder)
    loader = build_loader(ds, batch_size=batch_size, workers=workers, train=True, pin_memory=False)
    ds.set_epoch(0)
    assert len(list(loader)) == len(full)  # workers started: they hold their copy of ds from now on
    pos = ShardPosition(ds.batch_order(workers, batch_size, EPOCH), workers, states[6])
    ds.set_epoch(EPOCH, pos.skip, pos.next_worker)
    assert_same(full[:7] + list(loader), full)
    ds.set_epoch(EPOCH)  # and back to the start of the epoch
    assert_same(list(loader), full)


@pytest.mark.parametrize("equal", [True, False], ids=["equal_per_rank", "each_once"])
@pytest.mark.parametrize("workers", [0, 2])
def test_rank_num_batches_counts_the_loaders_batches(folders, workers, equal):
    for batch_size in (3, 4, 7):
        for rank in range(2):
            ds = dataset(folders[False], rank=rank, world_size=2, equal=equal)
            ds.set_epoch(EPOCH)
            loader = build_loader(ds, batch_size=batch_size, workers=workers, train=True, pin_memory=False)
            assert (
                sum(1 for _ in loader)
                == ds.rank_num_batches(workers, batch_size)
                == len(ds.batch_order(workers, batch_size))
            )


def test_two_ranks_partition_the_epoch_and_resume(folders):
    workers, batch_size = 2, 3
    per_rank = []
    for rank in range(2):
        ds = ShardDataset(folders[False], shuffle=True, buffer_size=5, seed=11, rank=rank, world_size=2)
        ds.set_epoch(EPOCH)
        loader = build_loader(ds, batch_size=1, workers=workers, train=True, pin_memory=False)
        per_rank.append([(b.images.numpy().tobytes(), int(b.labels)) for b in loader])
        assert len(per_rank[-1]) == ds.rank_num_samples(workers, EPOCH)
    everything = ShardDataset(folders[False])
    assert sorted(per_rank[0] + per_rank[1]) == sorted((img.numpy().tobytes(), label) for img, label, _ in everything)
    assert len(per_rank[0]) == len(set(per_rank[0])) > 0 and not set(per_rank[0]) & set(per_rank[1])

    # Rank 1 of 2, equal_per_rank, resumed mid-epoch.
    full, states = epoch_batches(dataset(folders[True], rank=1, world_size=2), workers, batch_size)
    assert len(full) == dataset(folders[True], rank=1, world_size=2).rank_num_batches(workers, batch_size) > 3
    resumed, _ = epoch_batches(dataset(folders[True], rank=1, world_size=2), workers, batch_size, states[2])
    assert_same(full[:3] + resumed, full)


def test_mismatched_position_is_refused(folders):
    ds = dataset(folders[False])
    order = ds.batch_order(2, 3, EPOCH)
    pos = ShardPosition(order, 2)
    pos.update(3, 0)
    with pytest.raises(ValueError, match="were the workers or the batch size changed"):
        ShardPosition(ds.batch_order(0, 3, EPOCH), 0, pos.state_dict())
    with pytest.raises(ValueError, match="need 0 <= yielded <= raw"):
        ds.set_epoch(EPOCH, [(1, 2), (0, 0)])
    ds.set_epoch(EPOCH, pos.skip, pos.next_worker)  # two streams, read with one: a clear error, not a silent restart
    with pytest.raises(ShardError, match="resume position is for 2 DataLoader stream"):
        next(iter(ds))
