"""scnet-train with model.convert_sc: a timm model outside the zoo trains with SC convolutions, its checkpoint
loads back for evaluation, and bad combinations are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scnet.cli.train import main as train_main
from scnet.data.demo import make_demo
from scnet.inference import load_checkpoint
from scnet.layers import SelfCalibratedConv2d

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo"), num_classes=3, train_per_class=2, val_per_class=1, progress=False)


def _args(demo: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(QUICKSTART),
        f"data.root={demo}",
        "model.name=resnet18",
        "model.num_classes=3",
        "data.image_size=64",
        "data.batch_size=2",
        "data.workers=0",
        "train.epochs=1",
        "train.tensorboard=false",
        "schedule.warmup_epochs=0",  # quickstart's one warm-up epoch would make a one-epoch run warn
        f"output_dir={out}",
        *extra,
    ]


def test_one_epoch_of_a_converted_resnet18(demo, tmp_path, capsys):
    out = tmp_path / "run"
    # r=2: at 64 px, ResNet-18's last maps are 2x2, too small for the release's r=4 (see the next test).
    assert train_main(_args(demo, out, "model.convert_sc=true", "model.pooling_r=2")) == 0
    err = capsys.readouterr().err
    assert "model.convert_sc: 16 of 16 3x3 convolutions replaced by SelfCalibratedConv2d\n" in err
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["epoch"] == 1
    assert "layer4.1.conv2.scconv.k4.0.weight" in state["model"] and "layer4.1.conv2.weight" not in state["model"]
    # scnet-eval's loader rebuilds the converted network from the run's config.
    loaded = load_checkpoint(out / "last.pth")
    assert loaded.name == "resnet18" and loaded.options["convert_sc"] is True and loaded.options["pooling_r"] == 2
    assert sum(isinstance(m, SelfCalibratedConv2d) for m in loaded.model.modules()) == 16
    with torch.no_grad():
        assert loaded.model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["model.convert_sc=true"], "data.image_size=64 is below resnet18's minimum of 97 px"),
        (["model.convert_sc=true", "model.name=resnet81"], "unknown model 'resnet81'; did you mean resnet18"),
        ([], "model 'resnet18' is a timm model outside the zoo (scnet.list_models()); convert_sc=True builds"),
        (
            ["model.name=resnet50", "model.pooling_r=2"],
            "model.pooling_r=2 is an SCConv option, and resnet50 is not an SC model (model.convert_sc=true makes it",
        ),
        (["model.convert_sc=true", "model.name=scnet50"], "scnet50 already has self-calibrated convolutions"),
    ],
)
def test_bad_combinations_are_one_line(demo, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert train_main(_args(demo, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scnet-train: error:") and err.count("\n") == 0, err
    assert message in err, err
    assert not (out / "last.pth").exists()
