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
    strict = ImageFolderDataset(samples, classes, strict=True)
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
    with pytest.raises(ValueError, match="'n03' is not in the class list"):
        build_dataset(tmp_path, "val")
