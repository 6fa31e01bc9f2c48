"""SCConv alone, and the input-size limit its r=4 pooling puts on the networks."""

from __future__ import annotations

import pytest
import torch

import scnet
from scnet.models import SCConv

from ..utils import randomize_
from . import reference_release


@pytest.mark.parametrize(
    "stride, dilation, groups, size",
    [(1, 1, 1, (16, 16)), (2, 1, 1, (13, 11)), (1, 2, 1, (9, 12)), (2, 1, 4, (15, 17))],
)
def test_scconv_matches_reference(stride, dilation, groups, size):
    torch.manual_seed(0)
    conv = randomize_(SCConv(8, stride=stride, dilation=dilation, groups=groups), seed=1).double().eval()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    sd = {f"sc.{k}": v for k, v in conv.state_dict().items()}
    with torch.no_grad():
        got = conv(x)
        want = reference_release.scconv(sd, "sc", x, training=False, stride=stride, dilation=dilation)
    # Strided 3x3 with padding 1 halves with ceil.
    assert got.shape == (2, 8, -(-size[0] // stride), -(-size[1] // stride))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_scconv_rejects_maps_smaller_than_the_pool():
    conv = SCConv(4).eval()
    with pytest.raises(scnet.InputTooSmallError):
        conv(torch.zeros(1, 4, 3, 8))


@pytest.fixture(scope="module")
def scnet50():
    return scnet.create_model("scnet50", num_classes=5).eval()


# 224 px gives a 7x7 last map; r=4 pooling needs >= 4x4 there, i.e. ceil(size / 32) >= 4, i.e. size >= 97.
@pytest.mark.parametrize("hw", [(96, 96), (96, 128), (128, 96)])
def test_too_small_input_names_the_minimum(scnet50, hw):
    with pytest.raises(scnet.InputTooSmallError, match=r"(?<!\d)97(?!\d)"):
        scnet50(torch.zeros(1, 3, *hw))


@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d"])
def test_minimum_input_works(name):
    model = scnet.create_model(name, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 97, 97)).shape == (1, 5)
    with pytest.raises(scnet.InputTooSmallError, match=r"(?<!\d)97(?!\d)"):
        model(torch.zeros(1, 3, 96, 96))


# Dilation instead of the last strides: the last map is ceil(size / output_stride), so the minimum drops.
@pytest.mark.parametrize("output_stride, minimum", [(16, 49), (8, 25)])
@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d"])
def test_output_stride_lowers_the_minimum(name, output_stride, minimum):
    model = scnet.create_model(name, num_classes=5, output_stride=output_stride).eval()
    with pytest.raises(scnet.InputTooSmallError, match=rf"(?<!\d){minimum}(?!\d)"):
        model(torch.zeros(1, 3, minimum - 1, minimum - 1))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, minimum, minimum)).shape == (1, 5)


def test_features_only_too_small_raises_our_error():
    """The wrapper runs the stages itself (no forward_features), so the check must live in the blocks."""
    features = scnet.create_model("scnet50", features_only=True).eval()
    with pytest.raises(scnet.InputTooSmallError, match=r"(?<!\d)97(?!\d)"):
        features(torch.zeros(1, 3, 96, 96))
    with torch.no_grad():
        assert features(torch.zeros(1, 3, 97, 97))[-1].shape == (1, 2048, 4, 4)
