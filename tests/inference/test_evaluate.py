"""evaluate(): counts against an independent computation and against crafted classifiers, on real files."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import scnet
from scnet.data.folders import load_real_labels
from scnet.data.loader import EpochSampler, build_dataset, build_loader, collate
from scnet.data.shards import make_shards
from scnet.data.transforms import eval_transform
from scnet.inference import build_eval_loader, evaluate

from ..utils import IMAGENET_MEAN, IMAGENET_STD
from . import (
    COUNTS,
    CROP_PCT,
    IMAGE_SIZE,
    TOTAL,
    crafted_state_dict,
    expected_real_top1,
    make_val_split,
    random_model,
    top1_of,
    write_real_json,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_val_split(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def dataset(root):
    return build_dataset(root, "val", transform=eval_transform(IMAGE_SIZE, CROP_PCT), bad_images="skip")


def _crafted_model(favoured: int) -> torch.nn.Module:
    model = scnet.create_model("scnet50", num_classes=3)
    model.load_state_dict(crafted_state_dict(favoured))
    return model


@torch.no_grad()
def test_counts_match_an_independent_computation(dataset):
    # 10 outputs for 3 labels, so that top-5 is not trivially everything.
    model = random_model(num_classes=10)
    result = evaluate(model, build_eval_loader(dataset, batch_size=3, workers=0), "cpu")

    # The same preprocessed pixels, normalised and classified here, all in one batch.
    images = torch.stack([dataset[i][0] for i in range(len(dataset))]).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    logits = model((images - mean) / std)
    labels = torch.tensor([label for _, label in dataset.samples])
    top1 = int((logits.argmax(dim=1) == labels).sum())
    top5 = int((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum())

    assert result["images"] == TOTAL
    assert result["top1"] == pytest.approx(100.0 * top1 / TOTAL)
    assert result["top5"] == pytest.approx(100.0 * top5 / TOTAL)
    assert result["skipped"] == []
    assert "real_top1" not in result
    # A plain Batch loader (no indices) gives the same counts.
    plain = build_loader(dataset, batch_size=4, workers=0, train=False, pin_memory=False, persistent=False)
    assert evaluate(model, plain, "cpu") == result


def test_crafted_classifier_and_real_labels(root, dataset, tmp_path):
    model = _crafted_model(favoured=0).train()
    real = load_real_labels(write_real_json(tmp_path / "real.json"), dataset.samples)
    result = evaluate(model, build_eval_loader(dataset, batch_size=2, workers=1), "cpu", real_labels=real)
    real_top1, real_images = expected_real_top1(favoured=0)
    assert (result["images"], result["top1"], result["top5"]) == (TOTAL, pytest.approx(top1_of(0)), 100.0)
    assert result["real_images"] == real_images == 5  # the two empty sets are left out
    assert result["real_top1"] == pytest.approx(real_top1) == 60.0
    assert model.training  # its mode is restored


def test_amp_bf16(dataset):
    result = evaluate(_crafted_model(favoured=2), build_eval_loader(dataset, 4, 0), "cpu", amp="bf16")
    assert (result["images"], result["top1"]) == (TOTAL, pytest.approx(top1_of(2)))


def test_shard_dataset_counts_every_sample_once(root, tmp_path):
    make_shards(root, tmp_path / "shards", shard_size=3, splits=["val"], progress=False)
    shards = build_dataset(
        tmp_path / "shards", "val", transform=eval_transform(IMAGE_SIZE, CROP_PCT), bad_images="skip"
    )
    result = evaluate(_crafted_model(favoured=1), build_eval_loader(shards, 2, 0), "cpu")
    assert (result["images"], result["top1"]) == (TOTAL, pytest.approx(top1_of(1)))


def test_refuses_what_would_not_be_exact(dataset):
    model = torch.nn.Identity()  # never run: the checks come first
    with pytest.raises(ValueError, match="drop_last"):
        evaluate(model, build_loader(dataset, 2, 0, train=True, pin_memory=False, persistent=False), "cpu")
    padded = DataLoader(dataset, batch_size=2, sampler=EpochSampler(len(dataset), False, even=True), collate_fn=collate)
    with pytest.raises(ValueError, match="even"):
        evaluate(model, padded, "cpu")
    with pytest.raises(ValueError, match="amp"):
        evaluate(model, build_eval_loader(dataset, 2, 0), "cpu", amp="fp8")
    with pytest.raises(ValueError, match="ReaL label sets"):
        evaluate(model, build_eval_loader(dataset, 2, 0), "cpu", real_labels=[[0]] * (TOTAL - 1))


def test_real_labels_need_indices(dataset):
    plain = build_loader(dataset, batch_size=4, workers=0, train=False, pin_memory=False, persistent=False)
    with pytest.raises(ValueError, match="index"):
        evaluate(_crafted_model(favoured=0), plain, "cpu", real_labels=[[0]] * TOTAL)


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
    """The COUNTS split with its last file (class c, the last sample) made unreadable."""
    root = make_val_split(tmp_path_factory.mktemp("bad"))
    last = sorted((root / "val" / "c").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:150])  # truncated JPEG
    return root, last


@pytest.mark.parametrize("batch_size", [1, 3])
def test_bad_file_is_skipped_not_counted(bad_root, batch_size):
    root, bad = bad_root
    dataset = build_dataset(root, "val", transform=eval_transform(IMAGE_SIZE, CROP_PCT), bad_images="skip")
    result = evaluate(_crafted_model(favoured=2), build_eval_loader(dataset, batch_size, 0), "cpu")
    # Class c (index 2) keeps 3 of its 4 images, out of 6 evaluated: nothing replaced the bad one.
    assert (result["images"], result["skipped"]) == (TOTAL - 1, [str(bad)])
    assert result["top1"] == pytest.approx(100.0 * (COUNTS["c"] - 1) / (TOTAL - 1))
    assert "replaced" not in result


def test_bad_last_shard_sample_is_reported(bad_root, tmp_path):
    root, bad = bad_root
    make_shards(root, tmp_path / "shards", shard_size=3, splits=["val"], progress=False)
    shards = build_dataset(
        tmp_path / "shards", "val", transform=eval_transform(IMAGE_SIZE, CROP_PCT), bad_images="skip"
    )
    result = evaluate(_crafted_model(favoured=0), build_eval_loader(shards, 2, 0), "cpu")
    assert result["images"] == TOTAL - 1 and len(result["skipped"]) == 1
    assert result["skipped"][0].startswith("val-000002.tar:c__") and result["skipped"][0].endswith(bad.stem)
    assert result["top1"] == pytest.approx(100.0 * COUNTS["a"] / (TOTAL - 1))


def test_refuses_a_dataset_that_replaces_bad_files(root):
    replacing = build_dataset(root, "val", transform=eval_transform(IMAGE_SIZE, CROP_PCT))  # training's default
    with pytest.raises(ValueError, match="bad_images='skip'"):
        evaluate(torch.nn.Identity(), build_eval_loader(replacing, 2, 0), "cpu")
