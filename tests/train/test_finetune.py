"""Fine-tuning: a 1000-class weights file into a model with another head, through ``load_weights`` and through
``scnet-train --config configs/finetune.yaml``: one line says which tensors were not loaded and why, and every
other tensor is the file's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import scnet
from scnet.cli.train import main as train_main
from scnet.config import load_config
from scnet.data.demo import make_demo
from scnet.inference.checkpoint import load_checkpoint
from scnet.models import load_weights

REPO = Path(__file__).parents[2]
FINETUNE = REPO / "configs" / "finetune.yaml"
TRACKED = 1000  # BN batch counters in the file: a loaded buffer keeps counting from here, a fresh one from 0
FEATURES = 2048  # scnet50's pooled features: the classifier's input


def _head_line(path: Path, classes: int, loaded: int) -> str:
    return (
        f"{path}: not loaded into scnet50: fc.weight, fc.bias (shape (1000, {FEATURES}) in the file vs "
        f"({classes}, {FEATURES}) in the model: another number of classes, so the classifier keeps its fresh "
        f"initialisation); the other {loaded} tensors were loaded"
    )


@pytest.fixture(scope="module")
def release(module_tmp: Path, scnet50_state_dict: dict[str, torch.Tensor]) -> tuple[Path, dict[str, torch.Tensor]]:
    """A bare 1000-class scnet50 state_dict, as the release published its files: random weights and BN
    statistics, and BN counters at TRACKED, so that every tensor, buffers included, tells the file from a fresh
    model."""
    weights = {
        k: torch.tensor(TRACKED) if k.endswith("num_batches_tracked") else v for k, v in scnet50_state_dict.items()
    }
    path = module_tmp / "scnet50-dc6a7e87.pth"
    torch.save(weights, path)
    return path, weights


def test_another_head_is_said_in_one_line_and_everything_else_loaded(release, capsys):
    path, weights = release
    model = scnet.create_model("scnet50", num_classes=7, pretrained=path)
    err = capsys.readouterr().err
    assert err == _head_line(path, 7, len(weights) - 2) + "\n"
    own = model.state_dict()
    assert own["fc.weight"].shape == (7, FEATURES)
    assert [k for k in own if k not in ("fc.weight", "fc.bias")] == [k for k in weights if not k.startswith("fc.")]
    for key, value in own.items():
        if not key.startswith("fc."):
            assert torch.equal(value, weights[key]), key


def test_no_head_and_the_same_head(release, capsys):
    path, weights = release
    scnet.create_model("scnet50", num_classes=0, pretrained=path)
    no_head = capsys.readouterr().err
    assert no_head == (
        f"{path}: not loaded into scnet50: fc.weight, fc.bias (the model has no classifier: num_classes=0); "
        f"the other {len(weights) - 2} tensors were loaded\n"
    )
    scnet.create_model("scnet50", pretrained=path)  # 1000 classes: everything loads, nothing to say
    assert capsys.readouterr().err == ""


def test_only_rank_0_speaks_and_quiet_is_quiet(release, capsys, monkeypatch):
    path, weights = release
    load_weights(scnet.create_model("scnet50", num_classes=3), path, quiet=True)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "1")  # torchrun's environment of a second process (no process group here)
    model = load_weights(scnet.create_model("scnet50", num_classes=3), path)
    assert capsys.readouterr().err == ""
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in weights.items() if not k.startswith("fc."))  # loaded all the same


def test_finetune_config_from_a_release_file_onto_three_classes(release, tmp_path, capsys):
    path, weights = release
    data = make_demo(tmp_path / "data", num_classes=3, train_per_class=2, val_per_class=1, progress=False)
    out = tmp_path / "run"
    code = train_main(
        [
            *("--config", str(FINETUNE)),
            f"model.pretrained={path}",
            f"data.root={data}",
            "model.num_classes=3",
            "model.channels_last=false",  # NCHW is the faster layout on CPU
            "data.image_size=100",
            "data.batch_size=2",
            "data.workers=0",
            "train.epochs=1",
            "train.tensorboard=false",
            f"output_dir={out}",
            # A vanishing lr and no warm-up (whose start, warmup_lr, is absolute): the steps leave every weight
            # as it was loaded (to ~1e-33), so the checkpoint shows what the run started from.
            "optim.lr=1e-30",
            "schedule.warmup_epochs=0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.splitlines()
    assert lines.count(_head_line(path, 3, len(weights) - 2)) == 1, err
    assert sum("not loaded" in line for line in lines) == 1, err

    state = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    trained = state["model"]
    assert trained["fc.weight"].shape == (3, FEATURES) and state["classes"] == sorted(
        p.name for p in data.glob("train/*")
    )
    steps = 3  # 6 training images at batch 2
    assert state["global_step"] == steps
    for key, value in trained.items():
        if key.startswith("fc."):
            continue
        if key.endswith("num_batches_tracked"):  # BN buffers: counted on from the file's TRACKED
            assert value.item() == TRACKED + steps, key
        elif key.endswith(("running_mean", "running_var")):
            continue  # moved by the training-mode forwards; loaded with the rest, as the counters show
        else:  # steps of lr * grad, below 1e-30: the file's values, a fresh init's differ by ~0.01 and more
            torch.testing.assert_close(value, weights[key], rtol=0, atol=1e-20, msg=key)


# ----------------------------------------------------------------------------------------------------------------
# model.num_classes: auto, model.freeze and the backbone's lr multipliers, through scnet-train

FROZEN = ("conv1.", "bn1.", "layer1.")  # model.freeze=[stem,layer1]
BACKBONE_LR, LAYER_DECAY = 0.1, 0.8
STEPS = 5  # an epoch: the demo set's 20 training images at batch 4
PEAK_LR, WARMUP_LR = 0.01 * 4 / 256, 1e-5  # finetune.yaml's lr at batch 4; schedule.warmup_lr


def _finetune(release_file: Path, demo: Path, out: Path, *extra: str) -> int:
    """Two epochs of configs/finetune.yaml (model.num_classes: auto) on the 10-class demo set, from the release
    file, with the stem and layer1 frozen and scaled backbone lrs; returns the exit status."""
    return train_main(
        [
            *("--config", str(FINETUNE)),
            f"model.pretrained={release_file}",
            f"data.root={demo}",
            "model.freeze=[stem,layer1]",
            f"optim.backbone_lr_scale={BACKBONE_LR}",
            f"optim.layer_decay={LAYER_DECAY}",
            "model.channels_last=false",
            "data.image_size=100",
            "data.batch_size=4",
            "data.workers=0",
            "train.epochs=2",
            "train.deterministic=true",
            "train.tensorboard=false",
            # A linear warm-up over the two epochs: the first ends half-way up the ramp, the second at the peak.
            "schedule.name=step",
            "schedule.milestones=[30]",
            "schedule.warmup_epochs=2",
            f"output_dir={out}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def finetuned(release, demo, module_tmp: Path) -> Path:
    """The run of :func:`_finetune`: last.pth after two epochs, last.prev.pth (the checkpoint it replaced) after one."""
    out = module_tmp / "finetuned"
    assert _finetune(release[0], demo, out) == 0
    return out


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_auto_classes_frozen_parts_and_backbone_lr(release, finetuned):
    path, weights = release
    state = _load(finetuned / "last.pth")
    # model.num_classes: auto -> the demo set's 10 classes, in the head, config.yaml and the checkpoint's config.
    assert state["model"]["fc.weight"].shape == (10, FEATURES) and len(state["classes"]) == 10
    assert state["config"]["model"]["num_classes"] == 10
    assert load_config(finetuned / "config.yaml").model.num_classes == 10
    loaded = load_checkpoint(finetuned / "last.pth")  # what scnet-eval and scnet-export read: the same model
    assert loaded.num_classes == 10 and torch.equal(loaded.model.state_dict()["fc.bias"], state["model"]["fc.bias"])

    for key, value in state["model"].items():
        if key.startswith(FROZEN):  # weights and BN statistics as the file had them, the counters too
            assert torch.equal(value, weights[key]), key
        elif key.endswith("num_batches_tracked"):
            assert value.item() == TRACKED + 2 * STEPS, key
        elif key.endswith(("running_mean", "running_var")) or (value.dim() == 4 and not key.startswith("fc.")):
            assert not torch.equal(value, weights[key]), key  # training-mode BNs and trained convolutions

    # Frozen parameters have no place in the optimizer; the head keeps the base lr, which is the one logged, and
    # every backbone group is at backbone_lr_scale * layer_decay ** (blocks from the head): 13 trained blocks.
    trainable = sum(1 for k in weights if not k.startswith(FROZEN) and k.endswith(("weight", "bias")))
    metrics = [json.loads(line) for line in (finetuned / "metrics.jsonl").read_text().splitlines()]
    after_one = _load(finetuned / "last.prev.pth")["optimizer"]
    for epoch, optimizer in enumerate((after_one, state["optimizer"]), start=1):
        groups = optimizer["param_groups"]
        assert sum(len(g["params"]) for g in groups) == len(optimizer["state"]) == trainable
        head = groups[0]
        assert (head["lr_scale"], len(head["params"])) == (1.0, 2)  # fc.weight, fc.bias
        assert sorted(g["lr_scale"] for g in groups[1:]) == pytest.approx(
            sorted(BACKBONE_LR * LAYER_DECAY**depth for depth in range(1, 14))
        )
        ramp = WARMUP_LR + epoch * STEPS / (2 * STEPS) * (PEAK_LR - WARMUP_LR)  # half-way up, then the peak
        assert head["lr"] == pytest.approx(ramp) and metrics[epoch - 1]["lr"] == head["lr"]
        assert all(g["lr"] == head["lr"] * g["lr_scale"] for g in groups)  # the schedule scales every group


@pytest.mark.slow
def test_a_frozen_run_resumes_exactly(release, demo, finetuned, tmp_path):
    """--resume from the first epoch's checkpoint (frozen BNs, lr groups, optimizer state of the trained parameters
    only) ends where the uninterrupted run did, bit for bit."""
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copyfile(finetuned / "last.prev.pth", resumed / "last.pth")
    assert _finetune(release[0], demo, resumed, "--resume", "auto") == 0
    a, b = _load(resumed / "last.pth"), _load(finetuned / "last.pth")
    assert a["global_step"] == b["global_step"] == 2 * STEPS
    for key, value in b["model"].items():
        assert torch.equal(a["model"][key], value), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
