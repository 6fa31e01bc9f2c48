"""convert_to_sc on real networks (torchvision's VGG-16, timm's ResNet-18) and on the odd cases."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import StdConv2d
from torch import nn

import scnet
from scnet.layers import ConvertedConv, SelfCalibratedConv2d, convert_to_sc, default_norm_layer
from scnet.models import SCConv

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _weights_change(c: ConvertedConv) -> int:
    """Weights the SC layer has beyond the 3x3 conv: K1 and K4 (out/2 x in/2), K2 and K3 (in/2 x in/2), all 3x3."""
    ci, co = c.in_chs // 2, c.out_chs // 2
    return 9 * (2 * ci * co + 2 * ci * ci) - 9 * c.in_chs * c.out_chs


def _train_step(model: nn.Module, size: int, classes: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out = model.train()(x)
    assert out.shape == (2, classes)
    F.cross_entropy(out, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# VGG-16's 3x3 convs, by index in `features`: (in, out). The first has 3 (odd) input channels.
VGG16 = {2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256), 14: (256, 256)}
VGG16 |= {17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}


@pytest.mark.slow
def test_vgg16_without_normalisation():
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None, num_classes=10)
    assert default_norm_layer(model) is None
    before = _params(model)
    report = convert_to_sc(model, norm_layer=None)
    assert report.converted == tuple(ConvertedConv(f"features.{i}", a, b, 1) for i, (a, b) in VGG16.items())
    assert [(s.name, s.reason) for s in report.skipped] == [("features.0", "in_chs 3 is odd")]
    summary = "12 of 13 3x3 convolutions replaced by SelfCalibratedConv2d; kept: features.0 (in_chs 3 is odd)"
    assert report.summary() == summary
    # Biases on K1 and K4: out_chs of them, as the conv had; no norm layer anywhere.
    assert _params(model) - before == sum(_weights_change(c) for c in report.converted)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(isinstance(model.features[i], SelfCalibratedConv2d) for i in VGG16)
    _train_step(model, 64, 10)  # the last block's maps are 4x4 at 64 px: r=4 holds one window


def test_resnet18_with_batch_norm():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5)
    assert default_norm_layer(model) is nn.BatchNorm2d
    before = _params(model)
    report = convert_to_sc(model)
    widths = {1: 64, 2: 128, 3: 256, 4: 512}
    want = []
    for stage, width in widths.items():
        first_in = widths.get(stage - 1, 64)
        stride = 1 if stage == 1 else 2
        want += [
            ConvertedConv(f"layer{stage}.0.conv1", first_in, width, stride),
            ConvertedConv(f"layer{stage}.0.conv2", width, width, 1),
            ConvertedConv(f"layer{stage}.1.conv1", width, width, 1),
            ConvertedConv(f"layer{stage}.1.conv2", width, width, 1),
        ]
    assert list(report.converted) == want
    # The 7x7 stem and the three 1x1 projections are kept, for their kernel.
    assert {s.name: s.reason for s in report.skipped} == {
        "conv1": "kernel 7x7, not 3x3",
        **{f"layer{i}.0.downsample.0": "kernel 1x1, not 3x3" for i in (2, 3, 4)},
    }
    assert report.summary() == "16 of 16 3x3 convolutions replaced by SelfCalibratedConv2d"
    # Each SC layer adds a BN (weight and bias) after each of its four kernels: 2 * (out/2 + in/2 + in/2 + out/2).
    bn = sum(2 * (c.in_chs + c.out_chs) for c in report.converted)
    assert _params(model) - before == sum(_weights_change(c) for c in report.converted) + bn
    # Layers of equal width keep the conv's weight count; the three widening ones have fewer.
    assert sum(_weights_change(c) < 0 for c in report.converted) == 3
    assert sum(_weights_change(c) == 0 for c in report.converted) == 13
    _train_step(model, 128, 5)  # layer4's maps are 4x4 at 128 px


def test_converting_twice_changes_nothing_and_sc_layers_are_kept():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), SCConv(8), nn.Conv2d(8, 8, 3, padding=1))
    first = convert_to_sc(model)
    assert [c.name for c in first.converted] == ["0", "2"]
    inside = {s.name for s in first.skipped if s.reason == "inside a self-calibrated layer"}
    assert inside == {"1.k2.1", "1.k3.0", "1.k4.0"}
    state = copy.deepcopy(model.state_dict())
    second = convert_to_sc(model)
    assert second.converted == ()
    assert len(second.skipped) == 3 + 2 * 4  # SCConv's three convs and each SC layer's four
    assert all(s.reason == "inside a self-calibrated layer" for s in second.skipped)
    assert model.state_dict().keys() == state.keys()


def test_what_is_not_eligible_says_why():
    model = nn.ModuleDict(
        {
            "depthwise": nn.Conv2d(8, 8, 3, padding=1, groups=8),
            "dilated": nn.Conv2d(8, 8, 3, padding=2, dilation=2),
            "valid": nn.Conv2d(8, 8, 3),
            "reflect": nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
            "same": nn.Conv2d(8, 8, 3, padding="same"),
            "strides": nn.Conv2d(8, 8, 3, stride=(1, 2), padding=1),
            "odd_out": nn.Conv2d(8, 5, 3, padding=1),
            "std": StdConv2d(8, 8, 3, padding=1),
            "wide": nn.Conv2d(8, 8, 5, padding=2),
            "ok": nn.Conv2d(8, 16, 3, stride=2, padding=1),
        }
    )
    report = convert_to_sc(model)
    assert report.converted == (ConvertedConv("ok", 8, 16, 2),)
    assert {s.name: s.reason for s in report.skipped} == {
        "depthwise": "groups=8",
        "dilated": "dilation (2, 2)",
        "valid": "padding (0, 0) (zeros), not 1 with zeros",
        "reflect": "padding (1, 1) (reflect), not 1 with zeros",
        "same": "padding 'same' (zeros), not 1 with zeros",
        "strides": "stride (1, 2) differs between the axes",
        "odd_out": "out_chs 5 is odd",
        "std": "a StdConv2d, not a plain nn.Conv2d (its own forward would be lost)",
        "wide": "kernel 5x5, not 3x3",
    }
    # The one line names the first three 3x3 convolutions kept (the 5x5 is not one of them) and counts the rest.
    summary = report.summary()
    assert summary.startswith("1 of 9 3x3 convolutions replaced by SelfCalibratedConv2d; kept: depthwise (groups=8), ")
    assert summary.endswith("valid (padding (0, 0) (zeros), not 1 with zeros) and 5 more")


def test_a_shared_conv_becomes_one_shared_layer():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    report = convert_to_sc(model)
    assert report.converted == (ConvertedConv("0", 8, 8, 1),)
    assert isinstance(model[0], SelfCalibratedConv2d) and model[0] is model[2]


def test_the_new_layer_takes_the_conv_s_dtype_mode_and_freezing():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)).double().eval().requires_grad_(False)
    convert_to_sc(model)
    layer = model[0]
    assert all(p.dtype == torch.float64 and not p.requires_grad for p in layer.parameters())
    assert not any(m.training for m in layer.modules())
    assert layer(torch.randn(1, 8, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_meta_models_convert_without_memory():
    with torch.device("meta"):
        model = timm.create_model("resnet18", pretrained=False)
    convert_to_sc(model)
    assert all(p.device.type == "meta" for p in model.parameters())


def test_bad_options_leave_the_model_unchanged():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
    for kwargs, message in [
        ({"pooling_r": 0}, "pooling_r must be an integer >= 1, got 0"),
        ({"upsample": "bicubic"}, "upsample must be one of 'nearest', 'bilinear', got 'bicubic'"),
        ({"bias": "yes"}, "bias must be True, False or None, got 'yes'"),
    ]:
        with pytest.raises(ValueError) as info:
            convert_to_sc(model, **kwargs)
        assert str(info.value) == message
        assert type(model[0]) is nn.Conv2d
    with pytest.raises(TypeError, match="eager nn.Module"):
        convert_to_sc(torch.jit.script(model))


# ---------------------------------------------------------------------------------------------- create_model


def test_create_model_converts_any_timm_model():
    model = scnet.create_model("resnet18", num_classes=3, convert_sc=True)
    assert model.sc_conversion.summary() == "16 of 16 3x3 convolutions replaced by SelfCalibratedConv2d"
    # layer4 sees the input / 32; r=4 needs 4 px there: (4 - 1) * 32 + 1 = 97.
    assert model.min_input_size == 97
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 97)).shape == (1, 3)
        with pytest.raises(scnet.InputTooSmallError, match="feature map of at least 4x4, got 3x3"):
            model(torch.randn(1, 3, 96, 96))
    assert scnet.create_model("resnet18", convert_sc=True, pooling_r=2).min_input_size == 33
    # Options reach the layers; timm's vgg16 has no BN, so its SC layers get none.
    vgg = scnet.create_model("vgg11", num_classes=3, convert_sc=True, upsample="bilinear")
    layers = [m for m in vgg.modules() if isinstance(m, SelfCalibratedConv2d)]
    assert layers and all(m.scconv.upsample == "bilinear" for m in layers)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in vgg.modules())


def test_create_model_names_and_options_are_checked():
    for name, kwargs, message in [
        ("resnet18", {}, "model 'resnet18' is a timm model outside the zoo (scnet.list_models()); convert_sc=True"),
        ("resnet81", {"convert_sc": True}, "unknown model 'resnet81'; did you mean resnet18"),
        ("scnet50", {"convert_sc": True}, "convert_sc=True: scnet50 already has self-calibrated convolutions"),
        ("resnet50", {"pooling_r": 2}, "pooling_r is an SCConv option, and resnet50 is not an SC model"),
        ("resnet18", {"convert_sc": "yes"}, "convert_sc must be True or False, got 'yes'"),
        ("resnet18", {"convert_sc": True, "pool_type": "min"}, "pool_type must be one of 'avg', 'max', got 'min'"),
    ]:
        with pytest.raises(ValueError) as info:
            scnet.create_model(name, **kwargs)
        assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_pretrained_plain_weights_load_before_the_conversion(tmp_path):
    torch.manual_seed(1)
    plain = timm.create_model("resnet18", num_classes=4)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    model = scnet.create_model("resnet18", num_classes=4, pretrained=tmp_path / "plain.pth", convert_sc=True)
    kept = model.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.bn1.weight", "layer2.0.downsample.0.weight", "fc.bias"):
        assert torch.equal(kept[key], plain.state_dict()[key]), key
    assert "layer1.0.conv1.weight" not in kept and "layer1.0.conv1.scconv.k2.1.weight" in kept
    # A converted model's own weights load after the conversion.
    torch.save(model.state_dict(), tmp_path / "converted.pth")
    again = scnet.create_model("resnet18", num_classes=4, pretrained=tmp_path / "converted.pth", convert_sc=True)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with pytest.raises(scnet.CheckpointError, match="does not fit"):
        scnet.create_model("resnet34", pretrained=tmp_path / "plain.pth", convert_sc=True)
