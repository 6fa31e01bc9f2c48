"""A seed and ``train.deterministic: true`` give the same run twice, under every recipe in configs/.

The two runs of each recipe also differ in their number of loader workers (0: the main process decodes; 2:
worker processes do), which must not change a single weight either: augmentations are seeded per sample,
and the trainer's own draws (drop-path, random erasing, mixup) come from generators no loader touches.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scnet.config import load_config
from scnet.data.demo import make_demo
from scnet.runtime.seeding import KernelAlerts
from scnet.train import train

REPO = Path(__file__).parents[2]
RECIPES = sorted((REPO / "configs" / "_base_").glob("recipe_*.yaml"))
# What a run must repeat exactly (timings aside).
STABLE = ("epoch", "train_loss", "lr", "top1", "top5", "ema_top1", "ema_top5", "val_images")


@pytest.fixture(scope="module")
def tiny(module_tmp) -> Path:
    """4 classes x 3 training images: 3 steps at batch 4; 4 validation images."""
    return make_demo(module_tmp / "tiny", num_classes=4, train_per_class=3, val_per_class=1, progress=False)


def _overrides(data: Path, out: Path, workers: int, *extra: str) -> list[str]:
    return [
        f"data.root={data}",
        "model.num_classes=4",
        "data.image_size=100",
        "data.batch_size=4",
        f"data.workers={workers}",
        f"output_dir={out}",
        "train.epochs=1",
        "train.seed=7",
        "train.deterministic=true",
        "train.tensorboard=false",
        *extra,
    ]


# Each recipe as written, at a size that trains in seconds; the modern one as the issue ran it: with gradient
# accumulation and bf16 autocast on top of its EMA, mixup/cutmix, RandAugment, random erasing and drop-path.
CASES = {path.stem.removeprefix("recipe_"): [] for path in RECIPES}
CASES["modern"] = ["train.accum_steps=2", "train.amp=bf16"]


def test_every_recipe_file_is_covered():
    assert set(CASES) == {"authors", "modern", "resnext"}, "a new recipe in configs/_base_: add it to CASES"


def _run(data: Path, out: Path, recipe: str, workers: int) -> tuple[dict, list[dict]]:
    cfg = load_config(
        REPO / "configs" / "_base_" / f"recipe_{recipe}.yaml", _overrides(data, out, workers, *CASES[recipe])
    )
    train(cfg)
    state = torch.load(out / "last.pth", weights_only=True)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return state, [{k: v for k, v in line.items() if k in STABLE} for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(CASES))
def test_two_runs_of_a_recipe_are_bit_identical(tiny, tmp_path, recipe):
    first, first_metrics = _run(tiny, tmp_path / "first", recipe, workers=0)
    second, second_metrics = _run(tiny, tmp_path / "second", recipe, workers=2)
    assert first["global_step"] == 3
    for key in ("model", "model_ema"):
        if key not in first:
            continue
        different = [k for k in first[key] if not torch.equal(first[key][k], second[key][k])]
        assert not different, f"{recipe}: {len(different)} of {len(first[key])} {key} tensors differ: {different[:3]}"
    assert ("model_ema" in first) == (recipe == "modern")
    assert first_metrics == second_metrics


def test_kernels_without_a_deterministic_implementation_are_named_once():
    """On CPU every kernel SCNet uses is deterministic, so the trainer's one line is checked on an op that has
    none on any device (max_unpool2d), under the same torch setting train.deterministic makes."""
    pooled, indices = F.max_pool2d(torch.randn(1, 1, 4, 4), 2, return_indices=True)
    lines: list[str] = []
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with KernelAlerts(say=lines.append) as alerts:
                F.max_unpool2d(pooled, indices, 2)
                F.max_unpool2d(pooled, indices, 2)
                alerts.flush()
                alerts.flush()  # nothing new: no second line
                warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert lines == [
        "scnet-train: warning: train.deterministic: no deterministic kernel for max_unpooling2d_forward_out on this "
        "device: the run will not repeat bit for bit"
    ]
    assert [str(w.message) for w in shown] == ["an unrelated warning"]  # other warnings still shown
