"""Tar shards: writing from a real ImageFolder tree, reading back through real decoding and DataLoader workers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from scnet.cli.data import main as data_main
from scnet.data.decode import BadImageError, decode_rgb
from scnet.data.demo import make_demo
from scnet.data.loader import collate
from scnet.data.shards import ShardDataset, ShardError, make_shards
from scnet.data.transforms import eval_transform

from .images import encode, make_tree, random_image

CLASSES = ["00_circle", "01_square", "02_triangle"]
EXTRA = {"train/01_square/png_named.JPEG", "train/02_triangle/gray.JPEG"}
NUM = {"train": 3 * 5 + len(EXTRA), "val": 3 * 3}


def fingerprint(image: torch.Tensor) -> str:
    """Identity of decoded pixels (every test image is different)."""
    return hashlib.sha1(image.numpy().tobytes() + str(tuple(image.shape)).encode()).hexdigest()


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Demo images plus ImageNet's oddities: a PNG named .JPEG and a grayscale JPEG."""
    root = make_demo(tmp_path_factory.mktemp("tree"), num_classes=3, train_per_class=5, val_per_class=3, progress=False)
    (root / "train/01_square/png_named.JPEG").write_bytes(encode(random_image(90, 70, seed=1), "PNG"))
    (root / "train/02_triangle/gray.JPEG").write_bytes(encode(random_image(80, 60, seed=2).convert("L"), quality=90))
    return root


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    make_shards(tree, out, shard_size=4, progress=False)  # train: 5 shards (4+4+4+4+2), val: 3 (4+4+1)
    return out


@pytest.fixture(scope="module")
def few_shards(tree, tmp_path_factory) -> Path:
    """Fewer shards (2) than the 4 (rank, worker) slots of the tests: splitting happens per sample."""
    out = tmp_path_factory.mktemp("few")
    make_shards(tree, out, shard_size=10, splits=["train"], progress=False)
    return out


def source(tree: Path, split: str) -> Counter:
    """(pixels, label) multiset of the tree, decoded from the original files."""
    return Counter(
        (fingerprint(decode_rgb(p.read_bytes(), str(p))), label)
        for label, c in enumerate(CLASSES)
        for p in (tree / split / c).iterdir()
    )


def read_all(ds, workers: int = 0) -> list[tuple[str, int, tuple[str, ...]]]:
    """(fingerprint, label, replaced) in the order the dataset (through a DataLoader with workers) yields them."""
    items = DataLoader(ds, batch_size=None, num_workers=workers) if workers else ds
    # (batch_size=None still runs default_convert, which turns the tuple into a list.)
    return [(fingerprint(img), int(label), tuple(replaced)) for img, label, replaced in items]


def members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


# ----------------------------------------------------------------------------------------------- writing


def test_index_and_members(tree, shards):
    for split, sizes in (("train", [4, 4, 4, 4, 1]), ("val", [4, 4, 1])):
        index = json.loads((shards / split / "index.json").read_text())
        assert index["classes"] == CLASSES and index["format_version"] == 1
        assert index["num_samples"] == NUM[split] == sum(sizes)
        assert index["shards"] == [{"name": f"{split}-{i:06d}.tar", "num_samples": n} for i, n in enumerate(sizes)]
        keys, labels = [], []
        for shard in index["shards"]:
            got = members(shards / split / shard["name"])
            assert len(got) == 2 * shard["num_samples"]
            for (image_name, data), (cls_name, cls) in zip(got[::2], got[1::2], strict=True):
                key, ext = image_name.split(".")
                assert cls_name == f"{key}.cls" and ext == "jpeg"  # no dot in keys; extension lower-cased
                label = int(cls.decode("ascii"))
                class_name, stem = key.split("__")
                assert class_name == CLASSES[label]
                assert data == (tree / split / class_name / f"{stem}.JPEG").read_bytes()  # the file, untouched
                keys.append(key)
                labels.append(label)
        assert len(set(keys)) == len(keys)
        if split == "val":
            assert keys == sorted(keys)  # evaluation order is the tree's
        else:
            assert labels != sorted(labels)  # train is shuffled across shards
            assert len(set(labels[:4])) > 1


def test_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "missing")):
        make_shards(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "d" / "val").mkdir(parents=True)
    with pytest.raises(ValueError, match=str(tmp_path / "d" / "train")):
        make_shards(tmp_path / "d", tmp_path / "out", progress=False)  # no train split folder
    with pytest.raises(ValueError, match=str(tmp_path / "d" / "val")):
        make_shards(tmp_path / "d", tmp_path / "out", splits=["val"], progress=False)  # no class folders
    (tmp_path / "d" / "val" / "a").mkdir()
    (tmp_path / "d" / "val" / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "val" / "a" / "x.JPEG")
    with pytest.raises(ValueError, match=str(tmp_path / "d" / "val" / "b")):
        make_shards(tmp_path / "d", tmp_path / "out", splits=["val"], progress=False)  # empty class folder


def test_interrupted_run_completes_and_keeps_finished_shards(tree, tmp_path):
    out = tmp_path / "out"
    first = make_shards(tree, out, shard_size=4, splits=["train"], progress=False)
    folder = out / "train"
    digests = {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.glob("*.tar")}
    (folder / "train-000002.tar").unlink()  # the shard being written when the run died ...
    dead = folder / ".train-000002.tar.99999.tmp"  # ... and its half-written temp file
    dead.write_bytes(b"\0" * 1000)
    os.utime(dead, (time.time() - 3600, time.time() - 3600))
    (folder / "index.json").unlink()  # the index is written last
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tar")}

    again = make_shards(tree, out, shard_size=4, splits=["train"], progress=False)
    assert again == first
    assert json.loads((folder / "index.json").read_text()) == first["train"]
    assert {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.glob("*.tar")} == digests  # same bytes
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.tar") if p.name in mtimes} == mtimes  # kept
    assert not dead.exists()

    # A different plan (other shard size) rewrites what changed and removes shards past the new end.
    make_shards(tree, out, shard_size=10, splits=["train"], progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["index.json", "train-000000.tar", "train-000001.tar"]
    assert Counter((f, label) for f, label, _ in read_all(ShardDataset(folder))) == source(tree, "train")


# ----------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("split", ["train", "val"])
def test_round_trip_same_pixels_and_labels(tree, shards, split):
    ds = ShardDataset(shards / split)
    assert ds.classes == CLASSES and ds.num_samples == NUM[split]
    got = read_all(ds)
    assert Counter((f, label) for f, label, _ in got) == source(tree, split)
    assert all(replaced == () for *_, replaced in got)
    assert read_all(ds) == got  # no shuffle: the same order every time


def test_transform_is_applied(shards):
    ds = ShardDataset(shards / "val", transform=lambda x: x[:, :16, :8].float() / 255)
    image, label, _ = next(iter(ds))
    assert image.shape == (3, 16, 8) and image.dtype == torch.float32 and isinstance(label, int)


def test_shuffle_epochs(shards):
    ds = ShardDataset(shards / "train", shuffle=True, buffer_size=5, seed=1)
    epochs = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        epochs.append([(f, label) for f, label, _ in read_all(ds)])
    everything = sorted(read_all(ShardDataset(shards / "train")))
    for order in epochs:
        assert sorted((f, label, ()) for f, label in order) == everything  # each sample once per epoch
    assert epochs[0] != epochs[1] != epochs[2]

    again = ShardDataset(shards / "train", shuffle=True, buffer_size=5, seed=1)
    again.set_epoch(1)
    assert [(f, label) for f, label, _ in read_all(again)] == epochs[1]  # reproducible
    other = ShardDataset(shards / "train", shuffle=True, buffer_size=5, seed=2)
    other.set_epoch(1)
    assert [(f, label) for f, label, _ in read_all(other)] != epochs[1]


def test_set_epoch_reaches_persistent_workers(shards):
    ds = ShardDataset(shards / "train", shuffle=True, buffer_size=3, seed=4)
    loader = DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True)
    seen = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        seen.append([fingerprint(img) for img, _, _ in loader])
    ref = ShardDataset(shards / "train", shuffle=True, buffer_size=3, seed=4)
    ref.set_epoch(1)  # in-process: worker 0 of 1, as in the loader
    assert seen[1] == [f for f, _, _ in read_all(ref)] != seen[0]


@pytest.mark.parametrize("regime", ["shard", "sample"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_two_workers_each_sample_once(shards, few_shards, regime, shuffle):
    folder = (shards if regime == "shard" else few_shards) / "train"
    everything = sorted(read_all(ShardDataset(folder)))
    per_rank = []
    for rank in range(2):
        ds = ShardDataset(folder, shuffle=shuffle, buffer_size=4, seed=7, rank=rank, world_size=2)
        ds.set_epoch(3)
        per_rank.append(read_all(ds, workers=2))
        assert len(per_rank[-1]) == ds.rank_num_samples(num_workers=2)
    assert sorted(per_rank[0] + per_rank[1]) == everything
    assert per_rank[0] and per_rank[1]


@pytest.mark.parametrize("regime", ["shard", "sample"])
def test_equal_per_rank(shards, few_shards, regime):
    folder = (shards if regime == "shard" else few_shards) / "train"
    batches = []
    for rank in range(2):
        ds = ShardDataset(folder, shuffle=True, seed=2, rank=rank, world_size=2, equal_per_rank=True)
        got = read_all(ds, workers=2)
        assert len(got) == NUM["train"] // 2 == ds.rank_num_samples(num_workers=2)
        if regime == "sample":
            assert len(set(got)) == len(got)  # nothing repeated when slots are balanced
        # Per-worker batching (drop_last) must also give every rank the same number of steps.
        loader = DataLoader(ds, batch_size=3, num_workers=2, drop_last=True, collate_fn=list)
        batches.append(len(list(loader)))
    assert batches[0] == batches[1] > 0
    for world in (3, 5):  # in-process, more ranks than shards or samples per shard
        counts = [
            len(read_all(ShardDataset(folder, rank=r, world_size=world, equal_per_rank=True))) for r in range(world)
        ]
        assert counts == [NUM["train"] // world] * world


@pytest.fixture(scope="module")
def with_bad(tree, tmp_path_factory) -> Path:
    """A val split whose second sample (in sorted order) is a truncated JPEG."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(tree / "val", root / "data" / "val")
    good = sorted((root / "data/val/00_circle").iterdir())[0].read_bytes()
    (root / "data/val/00_circle/00_circle_val_s0_00000b.JPEG").write_bytes(good[: len(good) // 2])
    make_shards(root / "data", root / "shards", shard_size=4, splits=["val"], progress=False)
    return root / "shards" / "val"


BAD = "val-000000.tar:00_circle__00_circle_val_s0_00000b"


def test_bad_sample_is_skipped_and_reported(with_bad):
    got = read_all(ShardDataset(with_bad))
    assert len(got) == NUM["val"]  # one more file, one skipped
    assert [r for *_, r in got if r] == [(BAD,)]
    assert [r for *_, r in got].index((BAD,)) == 1  # reported with the sample that took its place
    with_workers = read_all(ShardDataset(with_bad, rank=0, world_size=1), workers=2)
    assert [r for *_, r in with_workers if r] == [(BAD,)]
    equal = read_all(ShardDataset(with_bad, equal_per_rank=True, shuffle=True))
    assert len(equal) == NUM["val"] + 1 and (BAD,) in [r for *_, r in equal]  # the count holds, by repetition


def test_strict_raises_naming_shard_and_key(with_bad):
    with pytest.raises(BadImageError, match=BAD):
        read_all(ShardDataset(with_bad, bad_images="raise"))
    with pytest.raises(Exception, match=BAD):  # from a worker process: re-raised in the main process
        read_all(ShardDataset(with_bad, bad_images="raise"), workers=1)


def test_unexpected_error_in_a_worker_names_the_sample(shards):
    def broken(image: torch.Tensor) -> torch.Tensor:
        raise ZeroDivisionError("boom")

    with pytest.raises(ShardError, match=r"val-000000\.tar:00_circle__\S+: ZeroDivisionError: boom"):
        read_all(ShardDataset(shards / "val", transform=broken), workers=1)


def test_damaged_shard_is_named(shards, tmp_path):
    folder = tmp_path / "val"
    shutil.copytree(shards / "val", folder)
    data = (folder / "val-000001.tar").read_bytes()
    (folder / "val-000001.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="val-000001.tar"):
        read_all(ShardDataset(folder))
    (folder / "index.json").unlink()
    with pytest.raises(ValueError, match="index.json"):
        ShardDataset(folder)


@pytest.mark.slow
def test_cli_make_shards(tree, tmp_path, capsys):
    """Through scnet-data's entry point in this process (tests/data/test_demo.py runs the installed script)."""
    out = tmp_path / "cli"
    args = ["make-shards", "--data", str(tree), "--out", str(out), "--shard-size", "4", "--splits", "val"]
    code = data_main(args)
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert stdout.strip() == f"val: {NUM['val']} samples in 3 shards under {out}/val"
    assert sorted(p.name for p in (out / "val").iterdir()) == [
        "index.json",
        "val-000000.tar",
        "val-000001.tar",
        "val-000002.tar",
    ]


@pytest.fixture(scope="module")
def bad_last(tree, tmp_path_factory) -> Path:
    """A val split whose last sample (in sorted order) is random bytes named .JPEG."""
    root = tmp_path_factory.mktemp("bad_last")
    shutil.copytree(tree / "val", root / "data" / "val")
    (root / "data/val/02_triangle/02_triangle_val_s0_99999.JPEG").write_bytes(os.urandom(3000))
    make_shards(root / "data", root / "shards", shard_size=4, splits=["val"], progress=False)
    return root / "shards" / "val"


BAD_LAST = "val-000002.tar:02_triangle__02_triangle_val_s0_99999"


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_mode_yields_bad_samples_without_image_even_the_last(bad_last, workers):
    got = list(ShardDataset(bad_last, bad_images="skip"))
    assert len(got) == NUM["val"] + 1  # every sample once, the bad one included as itself
    image, label, names = got[-1]
    assert (image, label, tuple(names)) == (None, 2, (BAD_LAST,))
    assert all(image is not None and names == () for image, _, names in got[:-1])
    # Through a DataLoader (worker processes too), collated: the name reaches the last batch's skipped list.
    ds = ShardDataset(bad_last, bad_images="skip", transform=eval_transform(32, 1.0))
    batches = list(DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate))
    assert [name for b in batches for name in b.skipped] == [BAD_LAST]
    assert sum(b.labels.numel() for b in batches) == NUM["val"]
    with pytest.warns(UserWarning, match=BAD_LAST):  # replace mode: nothing left to stand in for it
        assert len(read_all(ShardDataset(bad_last))) == NUM["val"]


def _class_tree(root: Path, train: dict[str, int], val: dict[str, int]) -> Path:
    make_tree(root / "train", train)
    make_tree(root / "val", val)
    return root


def test_every_split_indexed_by_the_training_classes(tmp_path):
    train = {f"c{i}": 1 for i in range(4)}
    data = _class_tree(tmp_path / "data", train, {"c1": 1, "c3": 2})  # val lacks c0 and c2
    index = make_shards(data, tmp_path / "shards", shard_size=2, progress=False)
    assert index["val"]["classes"] == index["train"]["classes"] == sorted(train)
    labels = Counter(label for _, label, _ in read_all(ShardDataset(tmp_path / "shards" / "val")))
    assert labels == {1: 1, 3: 2}  # c1 and c3 keep their training indices (0 and 1 on their own)

    (data / "classes.txt").write_text("c3\nc2\nc1\nc0\n")  # a class list at the root wins over train's folders
    index = make_shards(data, tmp_path / "shards", shard_size=2, splits=["val"], progress=False)
    assert index["val"]["classes"] == ["c3", "c2", "c1", "c0"]
    # Same members as before, other labels: the shards were rewritten, not kept.
    labels = Counter(label for _, label, _ in read_all(ShardDataset(tmp_path / "shards" / "val")))
    assert labels == {2: 1, 0: 2}


def test_shard_labels_follow_a_given_class_list_by_name(tmp_path):
    data = tmp_path / "data"
    make_tree(data / "val", {"c1": 1, "c3": 2})  # no train split, no classes.txt: indexed on its own
    make_shards(data, tmp_path / "shards", splits=["val"], progress=False)
    folder = tmp_path / "shards" / "val"
    assert Counter(label for _, label, _ in read_all(ShardDataset(folder))) == {0: 1, 1: 2}
    ds = ShardDataset(folder, classes=["c0", "c1", "c2", "c3"])
    assert ds.classes == ["c0", "c1", "c2", "c3"]
    assert Counter(label for _, label, _ in read_all(ds)) == {1: 1, 3: 2}
    message = r"val/index.json: class 'c3' is not in the checkpoint's classes \(3 classes\)"
    with pytest.raises(ValueError, match=message):
        ShardDataset(folder, classes=["c0", "c1", "c2"], classes_from="the checkpoint's classes")
