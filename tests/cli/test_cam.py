"""Grad-CAM (scnet.inference.cam) where the answer is known in advance, and `scnet-cam` writing a real figure."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import scnet
from scnet.cli.cam import main
from scnet.inference.cam import default_layer, grad_cam

from ..utils import IMAGENET_MEAN, IMAGENET_STD, REPO_ROOT, randomize_, require_extra

SIZE = 100  # scnet50's minimum is 97 px
CLASSES = ["red", "green", "blue"]

# ----------------------------------------------------------------------------------------------- the method


class ColourNet(nn.Module):
    """Two 1x1 detectors (pure red, pure green), a stride-4 pool, global average and a linear head:
    class 0's score is the red area, class 1's the green area, whatever else the image holds."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]]).view(2, 3, 1, 1))
            conv.bias.fill_(-0.5)  # a pure colour gives 0.5, black or the other colour nothing after the ReLU
        self.features = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def _two_squares() -> torch.Tensor:
    """Black 96x96, a 32 px red square in the top-left quadrant, a 24 px green one in the bottom-right."""
    image = torch.zeros(1, 3, 96, 96)
    image[0, 0, 8:40, 8:40] = 1.0
    image[0, 1, 60:84, 56:80] = 1.0
    return image


def _mass_in(cam: torch.Tensor, rows: slice, cols: slice) -> float:
    return float(cam[rows, cols].sum() / cam.sum())


def test_grad_cam_points_at_the_evidence_of_each_class():
    model = ColourNet().eval()
    image = _two_squares()
    top = grad_cam(model, image, "features")
    # The red area (32^2 px) is larger than the green (24^2): class 0 scores highest.
    assert top.classes.tolist() == [0]
    assert top.maps.shape == (1, 96, 96)
    red = top.maps[0]
    assert float(red.min()) == 0.0 and float(red.max()) == pytest.approx(1.0)
    assert _mass_in(red, slice(0, 48), slice(0, 48)) > 0.99
    green = grad_cam(model, image, "features", target=1).maps[0]
    assert _mass_in(green, slice(48, 96), slice(48, 96)) > 0.99
    # The map's peak lies on the square itself, not just in its quadrant.
    row, col = divmod(int(green.argmax()), 96)
    assert 60 <= row < 84 and 56 <= col < 80
    # Probabilities: softmax of the logits, which are the two areas' shares times 0.5.
    logits = torch.tensor([0.5 * 32 * 32 / 96**2, 0.5 * 24 * 24 / 96**2])
    assert float(top.probs[0]) == pytest.approx(float(logits.softmax(0)[0]), rel=1e-5)


def _class_activation_map(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """CAM (Zhou et al., 2016) for a global-average-pool + linear head: ReLU(sum_k W[c, k] A_k). Grad-CAM
    equals it there, since dy_c / dA_k(i, j) = W[c, k] / (h w) everywhere (Selvaraju et al., section 3.1)."""
    with torch.no_grad():
        features = model.forward_features(x)
        cam = F.relu(torch.einsum("k,nkhw->nhw", model.get_classifier().weight[target], features))
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low, high = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    return (cam - low) / (high - low)


@pytest.mark.parametrize("name", ["scnet50", "resnet50"])
def test_grad_cam_equals_cam_on_a_pooled_linear_head(name):
    torch.manual_seed(0)
    model = randomize_(scnet.create_model(name, num_classes=4), seed=3).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    assert default_layer(model) == "layer4"
    result = grad_cam(model, x, target=2)
    assert result.layer == "layer4" and result.classes.tolist() == [2, 2]
    torch.testing.assert_close(result.maps, _class_activation_map(model, x, 2), rtol=0, atol=1e-4)
    # No parameter gradient is left behind (autograd.grad, not backward).
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_bad_layer_and_class():
    model = ColourNet().eval()
    with pytest.raises(ValueError, match="no layer 'featurez'.*features"):
        grad_cam(model, _two_squares(), "featurez")
    with pytest.raises(ValueError, match="class 5 out of range.*2 classes"):
        grad_cam(model, _two_squares(), "features", target=5)
    with pytest.raises(ValueError, match="not a"):  # the head's output: not a feature map
        grad_cam(model, _two_squares(), "fc")


# ----------------------------------------------------------------------------------------------- scnet-cam


@pytest.fixture(scope="module")
def files(module_tmp):
    """A scnet50 training checkpoint at SIZE px, a bare resnet50 state_dict and a SIZE x SIZE image (so the
    evaluation crop at crop_pct 1.0 is the image itself)."""
    torch.manual_seed(0)
    sc = randomize_(scnet.create_model("scnet50", num_classes=len(CLASSES)), seed=5)
    config = {
        "model": {"name": "scnet50", "num_classes": len(CLASSES)},
        "data": {"image_size": SIZE, "crop_pct": 1.0, "interpolation": "bilinear"},
    }
    paths = {"scnet": module_tmp / "scnet50_last.pth", "resnet": module_tmp / "resnet50.pth"}
    torch.save({"model": sc.state_dict(), "config": config, "classes": CLASSES}, paths["scnet"])
    torch.manual_seed(0)
    torch.save(randomize_(timm.create_model("resnet50", num_classes=3), seed=6).state_dict(), paths["resnet"])
    rng = np.random.default_rng(7)
    # Colours away from pure white everywhere: the figure's panels are found as non-white column runs.
    pixels = rng.integers(20, 200, (SIZE, SIZE, 3), dtype=np.uint8)
    paths["image"] = module_tmp / "photo.png"
    Image.fromarray(pixels).save(paths["image"])
    return paths


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _panels(png) -> int:
    """Image panels in a figure: runs of non-white columns across the middle row band of the figure."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    band = pixels[pixels.shape[0] // 2 - 5 : pixels.shape[0] // 2 + 5]
    coloured = (band < 245).any(axis=2).any(axis=0)
    starts = np.flatnonzero(coloured[1:] & ~coloured[:-1]) + 1
    return len(starts) + int(coloured[0])


def _expected_top(files) -> tuple[int, float]:
    """scnet50's top class and probability on the image, computed here: the image is its own crop."""
    state = torch.load(files["scnet"], weights_only=True)
    model = scnet.create_model("scnet50", num_classes=len(CLASSES)).eval()
    model.load_state_dict(state["model"])
    pixels = torch.from_numpy(np.array(Image.open(files["image"]).convert("RGB"))).permute(2, 0, 1).float() / 255
    x = ((pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None])[None]
    with torch.no_grad():
        probs = model(x).softmax(dim=1)[0]
    return int(probs.argmax()), float(probs.max())


def test_cli_writes_the_figure(files, tmp_path, capsys):
    require_extra("plot", "matplotlib")  # the figure is the command's output
    out_png, record = tmp_path / "figs" / "cam.png", tmp_path / "cam.json"
    code, out, err = _run(
        capsys,
        *("--checkpoint", files["scnet"], files["resnet"]),  # a list: space-separated (or the option repeated)
        *("--model", "auto,resnet50", "--image", files["image"]),  # names: comma-separated too
        *("--image-size", SIZE, "--out", out_png, "--json", record),
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == f"wrote {out_png} (3 panels)"
    index, prob = _expected_top(files)
    assert lines[0] == f"scnet50 ({files['scnet'].name}): layer4, {index}: {CLASSES[index]}, p={prob:.3f}"
    assert lines[1].startswith(f"resnet50 ({files['resnet'].name}): layer4, class ")
    written = json.loads(record.read_text())  # --json FILE: each panel's numbers, as printed
    assert written["figure"] == str(out_png) and [p["model"] for p in written["panels"]] == ["scnet50", "resnet50"]
    assert (written["panels"][0]["class"], written["panels"][0]["layer"]) == (index, "layer4")
    assert f"{written['panels'][0]['probability']:.3f}" == f"{prob:.3f}"
    with Image.open(out_png) as png:
        assert png.format == "PNG" and png.width > 2 * png.height
    assert _panels(out_png) == 3


def test_cli_class_and_layer(files, tmp_path, capsys):
    require_extra("plot", "matplotlib")  # the figure is the command's output
    out_png = tmp_path / "cam.png"
    args = ("--checkpoint", files["scnet"], "--image", files["image"], "--out", out_png)
    code, out, err = _run(capsys, *args, "--class", 2, "--layer", "layer3")
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"scnet50 ({files['scnet'].name}): layer3, 2: blue, p=")
    assert _panels(out_png) == 2


def test_cli_names_imagenet_classes_of_a_release_file(files, tmp_path, capsys):
    """A bare 1000-class file (a release's layout) is labelled with ImageNet's names, as scnet-predict does."""
    require_extra("plot", "matplotlib")
    torch.manual_seed(0)
    weights = tmp_path / "resnet50-imagenet.pth"
    torch.save(timm.create_model("resnet50").state_dict(), weights)
    args = ("--checkpoint", weights, "--model", "resnet50", "--image", files["image"], "--out", tmp_path / "c.png")
    code, out, err = _run(capsys, *args, "--class", 1)
    assert code == 0, err
    assert out.splitlines()[0].startswith("resnet50 (resnet50-imagenet.pth): layer4, 1: goldfish, p=")


def _one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scnet-cam: error: "), err
    for needle in needles:
        assert needle in lines[0], err


def test_cli_bad_input(files, tmp_path, capsys):
    require_extra("plot", "matplotlib")  # the figure is the command's output
    out_png = tmp_path / "cam.png"
    base = ("--image", files["image"], "--out", out_png)
    code, _, err = _run(capsys, "--checkpoint", files["scnet"], *base, "--layer", "layer5")
    assert code == 2
    _one_line_error(err, "'layer5'", "layer4", "conv1")  # the wrong name, and valid ones
    missing = tmp_path / "nope.pth"
    code, _, err = _run(capsys, "--checkpoint", missing, *base)
    assert code == 2
    _one_line_error(err, str(missing))
    code, _, err = _run(capsys, "--checkpoint", files["scnet"], "--image", tmp_path / "nope.jpg", "--out", out_png)
    assert code == 2
    _one_line_error(err, str(tmp_path / "nope.jpg"))
    code, _, err = _run(capsys, "--checkpoint", files["scnet"], *base, "--class", 3)
    assert code == 2
    _one_line_error(err, "class 3", "3 classes")
    code, _, err = _run(capsys, "--checkpoint", files["resnet"], *base)  # a bare state_dict needs --model
    assert code == 2
    _one_line_error(err, str(files["resnet"]), "--model")
    code, _, err = _run(
        capsys, "--checkpoint", files["scnet"], "--checkpoint", files["resnet"], *base, "--model", "a,b", "--model", "c"
    )
    assert code == 2
    _one_line_error(err, "--model names 3 architectures for 2 checkpoints")
    assert not out_png.exists()


def test_missing_matplotlib_says_how_to_install(files, tmp_path):
    """A real process in which matplotlib cannot be imported (None in sys.modules is Python's own way)."""
    out_png = tmp_path / "cam.png"
    code = (
        "import sys; sys.modules['matplotlib'] = None; from scnet.cli.cam import main; "
        f"sys.exit(main(['--checkpoint', {str(files['scnet'])!r}, '--image', {str(files['image'])!r}, "
        f"'--out', {str(out_png)!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr
    _one_line_error(proc.stderr, "pip install 'scnet-pytorch[plot]'")
    assert not out_png.exists()
