"""Helpers shared by the evaluation tests (engine and CLI): a tiny validation split and crafted classifiers."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import scnet

from ..data.images import make_tree
from ..utils import randomize_

# 7 images: an odd count, so two ranks get unequal shares (4 and 3). Classes sort as a, b, c = 0, 1, 2.
COUNTS = {"a": 2, "b": 1, "c": 4}
TOTAL = sum(COUNTS.values())
IMAGE_SIZE, CROP_PCT = 112, 1.0  # scnet50's minimum is 97 px
# ImageNet-ReaL sets for ILSVRC2012_val_00000001.. (more entries than images, as the real file has 50,000).
REAL = [[0], [1], [], [0, 2], [2], [0], [], [1], [2]]


def make_val_split(root: Path, counts: dict[str, int] = COUNTS, split: str = "val") -> Path:
    """``root/split/<class>/ILSVRC2012_val_0000000N.JPEG``, numbered 1.. in the dataset's sample order; returns root."""
    folder = make_tree(root / split, counts)
    number = 0
    for name in sorted(counts):
        for file in sorted((folder / name).iterdir()):
            number += 1
            file.rename(file.with_name(f"ILSVRC2012_val_{number:08d}.JPEG"))
    return root


def write_real_json(path: Path) -> Path:
    path.write_text(json.dumps(REAL))
    return path


def expected_real_top1(favoured: int, images: int = TOTAL) -> tuple[float, int]:
    """ReaL top-1 (percent) and its denominator when every image is predicted ``favoured``, from REAL alone."""
    sets = [s for s in REAL[:images] if s]
    return 100.0 * sum(favoured in s for s in sets) / len(sets), len(sets)


def crafted_state_dict(favoured: int, num_classes: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A scnet50 state_dict whose classifier ignores the features (zero weights, bias peaked at ``favoured``):
    every image is predicted ``favoured``, so the expected accuracy follows from the labels alone."""
    torch.manual_seed(seed)
    state_dict = dict(scnet.create_model("scnet50", num_classes=num_classes).state_dict())
    bias = -torch.arange(num_classes, dtype=torch.float32)  # distinct values: no ties in the ranking
    bias[favoured] = 10.0
    state_dict["fc.weight"] = torch.zeros_like(state_dict["fc.weight"])
    state_dict["fc.bias"] = bias
    return state_dict


def with_head(state_dict: dict[str, torch.Tensor], favoured: int) -> dict[str, torch.Tensor]:
    """A copy of a crafted state_dict that favours another class."""
    bias = -torch.arange(state_dict["fc.bias"].numel(), dtype=torch.float32)
    bias[favoured] = 10.0
    return {**state_dict, "fc.bias": bias}


def random_model(num_classes: int = 3, seed: int = 1) -> torch.nn.Module:
    """scnet50 with every weight and BN statistic random: predictions that depend on the image."""
    torch.manual_seed(0)
    return randomize_(scnet.create_model("scnet50", num_classes=num_classes), seed=seed).eval()


def top1_of(label: int) -> float:
    """Top-1 (percent) of a model that predicts ``label`` for every image of the COUNTS split."""
    return 100.0 * COUNTS[sorted(COUNTS)[label]] / TOTAL
