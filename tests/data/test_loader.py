"""Sampling across ranks, resumption, and the loader end to end with real worker processes."""

from __future__ import annotations

import pytest
import torch

from scnet.data.folders import ImageFolderDataset, scan_image_folder
from scnet.data.loader import EpochSampler, ReplacedLog, build_dataset, build_loader, collate, skipped_summary
from scnet.data.transforms import train_transform

from .images import make_tree


@pytest.mark.parametrize("n", [10, 11])
def test_train_sampling_two_ranks_covers_every_sample(n):
    ranks = [list(EpochSampler(n, shuffle=True, seed=3, even=True, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])  # equal steps on every rank
    seen = [i for r in ranks for i, _ in r]
    assert set(seen) == set(range(n))
    assert len(seen) - n == (n % 2)  # padding only as needed


@pytest.mark.parametrize("n", [10, 11])
def test_eval_sampling_two_ranks_exactly_once(n):
    ranks = [[i for i, _ in EpochSampler(n, shuffle=False, even=False, rank=r, world_size=2)] for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(n))


def test_epochs_reshuffle_and_resume_mid_epoch():
    s = EpochSampler(20, shuffle=True, seed=1, rank=1, world_size=2)
    s.set_epoch(0)
    e0 = [i for i, _ in s]
    s.set_epoch(1)
    e1 = list(s)
    assert [i for i, _ in e1] != e0 and {e for _, e in e1} == {1}
    s.set_epoch(1, start=4)
    assert list(s) == e1[4:] and len(s) == len(e1) - 4


def test_loader_with_workers_reproducible_and_counts_bad(tmp_path):
    make_tree(tmp_path / "train", {"a": 5, "b": 5}, size=(80, 60))
    bad = tmp_path / "train" / "b" / "b_2.JPEG"
    bad.write_bytes(b"not a jpeg")
    ds = build_dataset(tmp_path, "train", transform=train_transform(48), seed=5)

    def epoch(workers):
        loader = build_loader(ds, batch_size=4, workers=workers, train=True, seed=5)
        loader.sampler.set_epoch(2)
        batches = list(loader)
        return torch.cat([b.images for b in batches]), [n for b in batches for n in b.replaced]

    images0, replaced0 = epoch(0)
    images2, replaced2 = epoch(2)
    assert images0.shape == (8, 3, 48, 48) and images0.dtype == torch.uint8  # drop_last: 10 -> 8
    assert torch.equal(images0, images2)  # same crops whatever the worker count
    assert replaced0 == replaced2 == [str(bad)]  # with this seed and epoch, b_2 is 6th of 10: not dropped
    log = ReplacedLog()
    log.update(replaced0)
    assert log.summary() == f"1 bad samples replaced (1 files): {bad}"


def test_build_dataset_reads_shards(tmp_path):
    from scnet.data import shards  # part of the package: an import error must fail, not skip

    make_tree(tmp_path / "tree" / "val", {"a": 2, "b": 1})
    shards.make_shards(tmp_path / "tree", tmp_path / "shards", shard_size=2, splits=["val"], progress=False)
    ds = build_dataset(tmp_path / "shards", "val")
    labels = sorted(label for _, label, _ in ds)
    assert labels == [0, 0, 1]


def test_image_folder_classes_from_scan(tmp_path):
    make_tree(tmp_path, {"x": 1})
    classes, samples = scan_image_folder(tmp_path)
    assert isinstance(build_dataset(tmp_path.parent, tmp_path.name), ImageFolderDataset)
    assert classes == ["x"] and len(samples) == 1


def test_replaced_log_summary():
    log = ReplacedLog()
    assert log.summary() == ""
    log.update(["x/1.JPEG", "x/2.JPEG"])
    log.update(["x/1.JPEG"])
    assert log.summary(limit=1) == "3 bad samples replaced (2 files): x/1.JPEG and 1 more"
    log.reset()
    assert log.summary() == ""


def test_collate_leaves_skipped_items_out():
    image = torch.full((3, 4, 4), 7, dtype=torch.uint8)
    batch = collate([(image, 2, ()), (None, 1, ("bad.JPEG",)), (image + 1, 0, ("other.JPEG",))])
    assert batch.images.shape == (2, 3, 4, 4) and batch.labels.tolist() == [2, 0]
    assert torch.equal(batch.images[1], image + 1)
    assert (batch.skipped, batch.replaced) == (["bad.JPEG"], ["other.JPEG"])
    empty = collate([(None, 1, ("a.JPEG",)), (None, 0, ("b.JPEG",))])
    assert empty.images.shape[0] == 0 and empty.labels.numel() == 0 and empty.skipped == ["a.JPEG", "b.JPEG"]


def test_skip_mode_loader_reports_every_bad_file_once(tmp_path):
    make_tree(tmp_path / "val", {"a": 3, "b": 2}, size=(80, 60))
    bad = [tmp_path / "val" / "a" / "a_1.JPEG", tmp_path / "val" / "b" / "b_1.JPEG"]  # b_1 is the last sample
    for path in bad:
        path.write_bytes(path.read_bytes()[:200])  # truncated
    ds = build_dataset(tmp_path, "val", transform=train_transform(32), bad_images="skip")
    batches = list(build_loader(ds, batch_size=2, workers=2, train=False, persistent=False))
    # Samples a_0, a_1 (bad) | a_2, b_0 | b_1 (bad): the last batch holds no image at all.
    assert [b.images.shape[0] for b in batches] == [1, 2, 0]
    assert [name for b in batches for name in b.skipped] == [str(p) for p in bad]
    assert all(not b.replaced for b in batches)
    assert sorted(label for b in batches for label in b.labels.tolist()) == [0, 0, 1]
    summary = skipped_summary([str(p) for p in bad], limit=1)
    assert summary == f"2 unreadable file(s) skipped, not counted: {bad[0]} and 1 more"
