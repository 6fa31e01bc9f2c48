"""Folder readers: ImageFolder, ImageNet-V2 order, ReaL labels, bad-file replacement."""

from __future__ import annotations

import json

import pytest
import torch

from scnet.data.decode import BadImageError
from scnet.data.folders import ImageFolderDataset, load_real_labels, scan_image_folder, scan_imagenet_v2
from scnet.data.loader import build_dataset

from .images import make_tree


def test_image_folder_sorted_classes(tmp_path):
    make_tree(tmp_path, {"n02": 2, "n01": 3, "n10": 1})
    (tmp_path / "n01" / "notes.txt").write_text("not an image")
    classes, samples = scan_image_folder(tmp_path)
    assert classes == ["n01", "n02", "n10"]
    assert len(samples) == 6
    assert {label for path, label in samples if "/n02/" in path} == {1}


def test_imagenet_v2_numeric_order(tmp_path):
    # Labels are the folder numbers: a string sort would map folder "10" to index 2.
    make_tree(tmp_path, {str(i): 1 for i in range(12)})
    classes, samples = scan_imagenet_v2(tmp_path)
    assert classes == [str(i) for i in range(12)]
    for path, label in samples:
        assert path.split("/")[-2] == str(label)
    ds = build_dataset(tmp_path.parent, tmp_path.name)  # detected as V2 by its numeric folders
    assert {ds.samples[i][1] for i in range(len(ds))} == set(range(12))
    assert [label for _, label in ds.samples if "/10/" in _] == [10]


@pytest.mark.parametrize(
    "layout,message",
    [({}, "no class folders"), ({"a": 1, "b": 0}, "empty class folder")],
)
def test_bad_trees_name_the_folder(tmp_path, layout, message):
    make_tree(tmp_path, layout)
    (tmp_path / "b").mkdir(exist_ok=True)
    if not layout:
        (tmp_path / "b").rmdir()
    with pytest.raises(ValueError, match=message):
        scan_image_folder(tmp_path)
    with pytest.raises(ValueError, match="no such data folder"):
        build_dataset(tmp_path, "missing_split")


def test_real_labels_match_by_file_number(tmp_path):
    names = ["ILSVRC2012_val_00000003.JPEG", "ILSVRC2012_val_00000001.JPEG"]
    real = [[5], [], [1, 7]]
    (tmp_path / "real.json").write_text(json.dumps(real))
    labels = load_real_labels(tmp_path / "real.json", [(f"/val/n0/{n}", 0) for n in names])
    assert labels == [[1, 7], [5]]
    with pytest.raises(ValueError, match="cannot match"):
        load_real_labels(tmp_path / "real.json", [("/val/n0/other.JPEG", 0)])


def test_bad_sample_replaced_and_reported(tmp_path):
    make_tree(tmp_path, {"a": 3})
    bad = tmp_path / "a" / "a_1.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    classes, samples = scan_image_folder(tmp_path)
    ds = ImageFolderDataset(samples, classes)
    image, label, replaced = ds[1]
    assert replaced == (str(bad),)
    assert torch.equal(image, ds[2][0])  # stood in for by the next sample
    assert ds[0][2] == ()
    strict = ImageFolderDataset(samples, classes, bad_images="raise")
    with pytest.raises(BadImageError, match="a_1.JPEG"):
        strict[1]


def test_per_sample_seed_makes_augmentation_reproducible(tmp_path):
    from scnet.data.transforms import train_transform

    make_tree(tmp_path, {"a": 2}, size=(120, 90))
    classes, samples = scan_image_folder(tmp_path)
    ds = ImageFolderDataset(samples, classes, transform=train_transform(32), seed=7)
    first = ds[(1, 3)][0]
    torch.manual_seed(999)  # whatever the process RNG was doing
    assert torch.equal(ds[(1, 3)][0], first)
    assert not torch.equal(ds[(1, 4)][0], first)  # another epoch, another crop


def test_class_list_keeps_indices_of_a_partial_split(tmp_path):
    # val lacks class n02: without classes.txt, n03 would become index 1.
    make_tree(tmp_path / "val", {"n01": 1, "n03": 2})
    (tmp_path / "classes.txt").write_text("n01\nn02\nn03\n")
    ds = build_dataset(tmp_path, "val")
    assert ds.classes == ["n01", "n02", "n03"]
    assert sorted(label for _, label in ds.samples) == [0, 2, 2]
    (tmp_path / "classes.txt").write_text("n01\nn02\n")
    with pytest.raises(ValueError, match=r"val/n03: class folder 'n03' is not in \S*classes.txt"):
        build_dataset(tmp_path, "val")


def test_bad_sample_skipped_in_skip_mode(tmp_path):
    make_tree(tmp_path, {"a": 2, "b": 1})
    bad = tmp_path / "a" / "a_1.JPEG"
    bad.write_bytes(b"\xff\xd8 random bytes, not a JPEG")
    classes, samples = scan_image_folder(tmp_path)
    ds = ImageFolderDataset(samples, classes, bad_images="skip")
    assert ds[1] == (None, 0, (str(bad),))  # no image, its own label, its name: nothing stands in for it
    assert ds[2][0] is not None and ds[2][1:] == (1, ())
    with pytest.raises(ValueError, match="bad_images"):
        ImageFolderDataset(samples, classes, bad_images="ignore")


def test_val_split_takes_the_training_class_list(tmp_path):
    # Train has n00..n09; val lacks n00, so its own sorted folders would number n01 as 0, n02 as 1, ...
    train = [f"n{i:02d}" for i in range(10)]
    make_tree(tmp_path / "train", dict.fromkeys(train, 1))
    make_tree(tmp_path / "val", {name: 1 + (name == "n05") for name in train[1:]})
    assert build_dataset(tmp_path, "val").classes == train[1:]  # on its own: 9 classes, shifted
    ds = build_dataset(tmp_path, "val", classes=train, classes_from="the training classes")
    assert ds.classes == train
    for path, label in ds.samples:
        assert train[label] == path.split("/")[-2], path  # labelled by the training index of its folder
    assert sorted(label for _, label in ds.samples) == [1, 2, 3, 4, 5, 5, 6, 7, 8, 9]

    make_tree(tmp_path / "val", {"zz_new": 1})
    with pytest.raises(ValueError, match=r"val/zz_new: class folder 'zz_new' is not in the training classes"):
        build_dataset(tmp_path, "val", classes=train, classes_from="the training classes")


def test_imagenet_v2_numbers_index_a_given_class_list(tmp_path):
    make_tree(tmp_path / "v2", {"0": 1, "2": 1, "11": 1})
    names = [f"c{i}" for i in range(12)]
    ds = build_dataset(tmp_path, "v2", classes=names)
    assert ds.classes == names
    assert sorted((path.split("/")[-2], label) for path, label in ds.samples) == [("0", 0), ("11", 11), ("2", 2)]
    message = r"v2/11: ImageNet-V2 class folder '11' is not an index into .* \(11 classes\)"
    with pytest.raises(ValueError, match=message):
        build_dataset(tmp_path, "v2", classes=names[:11])
