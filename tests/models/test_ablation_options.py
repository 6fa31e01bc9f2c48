"""SCConv's ablation options as model options: pooling_r, pool_type, pool_ceil_mode, calib_identity, upsample.

Each option is checked against a direct computation written here with torch.nn.functional (and, for the
pooling windows, by slicing), never against scnet's own code; whole networks against reference_release.
"""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision.models.feature_extraction import create_feature_extractor

import scnet
from scnet.models import SCConv

from ..utils import EXPECTED_BASELINES, randomize_, shallow_
from . import reference_release

RELEASE = reference_release.RELEASE_CALIB
# Every option away from the release, and the ablation table's r=8 row (ceil mode: a documented deviation).
FLIPPED = dict(pooling_r=2, pool_type="max", calib_identity=False, upsample="bilinear")
R8_CEIL = dict(pooling_r=8, pool_ceil_mode=True)
GRID = dict(
    pooling_r=[1, 2, 4, 8],
    pool_type=["avg", "max"],
    pool_ceil_mode=[False, True],
    calib_identity=[True, False],
    upsample=["nearest", "bilinear"],
)
FIFTY_LAYER = [n for n in EXPECTED_BASELINES if "50" in n]

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:FutureWarning",
    "ignore:`torch.jit.script_method` is deprecated:FutureWarning",
    "ignore:The TorchScript type system doesn't support instance-level annotations:UserWarning",
)


def _model(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_(scnet.create_model(name, num_classes=7, **options), seed=1).eval()


def _input(size: int | tuple[int, int], batch: int = 2, channels: int = 3, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(batch, channels, *((size, size) if isinstance(size, int) else size), generator=gen, dtype=dtype)


def _close(got: torch.Tensor, want: torch.Tensor, msg: str = "") -> None:
    """Equal up to rounding relative to the tensor's scale (other kernels or summation orders)."""
    tol = 1e-9 if want.dtype == torch.float64 else 1e-4
    scale = max(float(want.detach().abs().max()), 1.0)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=msg)


def _conv_calls(fn, *args) -> int:
    """Convolutions one call of ``fn`` runs (the profiler counts scripted code too)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*args)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::convolution")


def _layout(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _window_pool(x: torch.Tensor, r: int, pool_type: str, ceil_mode: bool) -> torch.Tensor:
    """r x r windows at stride r, taken by slicing: floor drops the rows/columns a whole window does not
    cover; ceil keeps them as partial windows over the pixels they cover."""
    h, w = x.shape[-2:]
    rows, cols = (-(-h // r), -(-w // r)) if ceil_mode else (h // r, w // r)

    def reduce(t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=(-2, -1)) if pool_type == "avg" else t.amax(dim=(-2, -1))

    return torch.stack(
        [
            torch.stack([reduce(x[..., i * r : (i + 1) * r, j * r : (j + 1) * r]) for j in range(cols)], -1)
            for i in range(rows)
        ],
        -2,
    )


def _direct_scconv(conv: SCConv, x: torch.Tensor, stride: int, groups: int, options: dict) -> torch.Tensor:
    """SCConv in eval mode from its state_dict, with the options spelled out."""
    o = {**RELEASE, **options}
    sd = conv.state_dict()

    def conv_bn(prefix: str, t: torch.Tensor, conv_idx: int, stride: int = 1) -> torch.Tensor:
        t = F.conv2d(t, sd[f"{prefix}.{conv_idx}.weight"], stride=stride, padding=1, groups=groups)
        bn = f"{prefix}.{conv_idx + 1}"
        return F.batch_norm(
            t, sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"], sd[f"{bn}.weight"], sd[f"{bn}.bias"], eps=1e-5
        )

    context = conv_bn("k2", _window_pool(x, o["pooling_r"], o["pool_type"], o["pool_ceil_mode"]), 1)
    if o["upsample"] == "bilinear":
        context = F.interpolate(context, size=x.shape[-2:], mode="bilinear", align_corners=False)
    else:
        context = F.interpolate(context, size=x.shape[-2:], mode="nearest")
    gate = torch.sigmoid(x + context) if o["calib_identity"] else torch.sigmoid(context)
    return conv_bn("k4", conv_bn("k3", x, 0) * gate, 0, stride)


# ----------------------------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("pool_type", ["avg", "max"])
@pytest.mark.parametrize("size, r", [((7, 7), 8), ((13, 11), 4), ((28, 14), 8), ((5, 9), 2)])
def test_ceil_mode_pools_partial_windows_over_the_pixels_they_cover(size, r, pool_type):
    """PyTorch's ceil mode, as SCConv uses it: ceil(size / r) windows, a window larger than the map is the
    whole map, and an average divides by the pixels covered (not r * r), in both memory formats."""
    pool = SCConv(3, pooling_r=r, pool_type=pool_type, pool_ceil_mode=True).k2[0]
    x = _input(size, channels=3, dtype=torch.float64)
    want = _window_pool(x, r, pool_type, ceil_mode=True)
    assert want.shape[-2:] == (-(-size[0] // r), -(-size[1] // r))
    torch.testing.assert_close(pool(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pool(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-12, atol=1e-12)


# (options, map size): each option alone, and together; maps with partial windows and smaller than r.
SCCONV_CASES = [
    ({}, (13, 11)),
    ({"pool_type": "max"}, (13, 11)),
    ({"pool_ceil_mode": True}, (13, 11)),
    ({"calib_identity": False}, (13, 11)),
    ({"upsample": "bilinear"}, (13, 11)),
    ({"pooling_r": 2}, (13, 11)),
    ({"pooling_r": 1}, (5, 6)),
    (R8_CEIL, (7, 7)),
    (R8_CEIL, (13, 11)),
    ({**FLIPPED, "pool_ceil_mode": True}, (13, 11)),
]


@pytest.mark.parametrize("options, size", SCCONV_CASES, ids=lambda v: str(v).replace(" ", ""))
@pytest.mark.parametrize("stride, groups", [(1, 1), (2, 2)])
def test_scconv_options_match_direct_computation(options, size, stride, groups):
    torch.manual_seed(0)
    conv = randomize_(SCConv(8, stride=stride, groups=groups, **options), seed=1).double().eval()
    x = _input(size, channels=8, dtype=torch.float64)
    with torch.no_grad():
        got = conv(x)
    torch.testing.assert_close(got, _direct_scconv(conv, x, stride, groups, options), rtol=1e-10, atol=1e-10)
    if options:  # and the options change the function (every map here holds the release's 4x4 window)
        assert not torch.allclose(got, _direct_scconv(conv, x, stride, groups, {}), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d"])
@pytest.mark.parametrize("options", [FLIPPED, R8_CEIL], ids=["flipped", "r8_ceil"])
def test_network_with_options_matches_reference(name, options):
    """A whole network (every block, v1 and v1d) against the functional reference given the same options."""
    model = _model(name, **options).double()
    x = _input((45, 38), dtype=torch.float64)  # odd sizes, below the release's 97 px minimum
    with torch.no_grad():
        got = model(x)
        want = reference_release.forward(model.state_dict(), x, calib=options)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * want.abs().max().item())


# ----------------------------------------------------------------------------------------------- defaults, layout


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pool_type": "min"}, "pool_type must be one of 'avg', 'max', got 'min'"),
        ({"upsample": "bicubic"}, "upsample must be one of 'nearest', 'bilinear', got 'bicubic'"),
        ({"pooling_r": 0}, "pooling_r must be an integer >= 1, got 0"),
        ({"pooling_r": -2}, "pooling_r must be an integer >= 1, got -2"),
        ({"pooling_r": 2.0}, "pooling_r must be an integer >= 1, got 2.0"),
        ({"pooling_r": True}, "pooling_r must be an integer >= 1, got True"),
        ({"pool_ceil_mode": "false"}, "pool_ceil_mode must be True or False, got 'false'"),
        ({"calib_identity": 1}, "calib_identity must be True or False, got 1"),
    ],
)
def test_invalid_options_raise_at_construction(options, message):
    builders = (
        lambda: scnet.create_model("scnet50", **options),
        lambda: timm.create_model("sc_resnext50_32x4d", **options),
        lambda: SCConv(8, **options),
    )
    with torch.device("meta"):
        for build in builders:
            with pytest.raises(ValueError) as info:
                build()
            assert str(info.value) == message


@pytest.mark.parametrize("name", FIFTY_LAYER)
def test_release_options_are_bit_identical_to_the_default(name):
    x = _input(100)
    with torch.no_grad():
        assert torch.equal(_model(name, **RELEASE)(x), _model(name)(x))


def test_state_dict_layout_is_the_same_for_every_scconv_option():
    want = _layout(SCConv(8, groups=2))
    for values in itertools.product(*GRID.values()):
        options = dict(zip(GRID, values, strict=True))
        assert _layout(SCConv(8, groups=2, **options)) == want, options


@pytest.mark.parametrize("name", list(EXPECTED_BASELINES))
def test_options_reach_every_scconv_and_keep_the_state_dict(name):
    """Through scnet.create_model and timm.create_model, for all eight names (on the meta device: no compute)."""
    with torch.device("meta"):
        want = _layout(scnet.create_model(name))
        for create, options in ((scnet.create_model, FLIPPED), (timm.create_model, R8_CEIL)):
            model = create(name, **options)
            assert _layout(model) == want, options
            o = {**RELEASE, **options}
            convs = [m for m in model.modules() if isinstance(m, SCConv)]
            assert len(convs) == sum(k.endswith("scconv.k2.1.weight") for k, _ in want)
            for conv in convs:
                pool = conv.k2[0]
                assert isinstance(pool, torch.nn.MaxPool2d if o["pool_type"] == "max" else torch.nn.AvgPool2d)
                assert (pool.kernel_size, pool.stride, pool.ceil_mode) == (o["pooling_r"],) * 2 + (o["pool_ceil_mode"],)
                assert (conv.calib_identity, conv.upsample) == (o["calib_identity"], o["upsample"])


# ----------------------------------------------------------------------------------------------- input size


@pytest.mark.parametrize(
    "options, output_stride, minimum",
    [
        ({}, 32, 97),
        ({"pooling_r": 2}, 32, 33),
        ({"pooling_r": 8}, 32, 225),
        ({"pooling_r": 8}, 16, 113),
        ({"pooling_r": 1}, 32, 1),
        (R8_CEIL, 32, 1),
        ({"pool_ceil_mode": True}, 8, 1),
    ],
)
def test_min_input_size_follows_the_options(options, output_stride, minimum):
    """(m - 1) * output_stride + 1 with m = r (floor) or 1 (ceil); the registered cfg keeps the release's."""
    with torch.device("meta"):
        model = scnet.create_model("scnet50", output_stride=output_stride, **options)
    assert model.min_input_size == minimum
    assert model.pretrained_cfg["min_input_size"] == (3, 97, 97)
    assert timm.models.get_pretrained_cfg("scnet50").min_input_size == (3, 97, 97)


@pytest.mark.parametrize("options, minimum", [({"pooling_r": 2}, 33), (R8_CEIL, 1), ({"pooling_r": 1}, 1)])
def test_min_input_size_is_true(options, minimum):
    model = _model("scnet50", **options)
    with torch.no_grad():
        assert model(_input(minimum)).shape == (2, 7)
    if minimum > 1:
        r = options["pooling_r"]
        with pytest.raises(scnet.InputTooSmallError, match=rf"(?<!\d){minimum}(?!\d).*r={r} pooling"):
            model(_input(minimum - 1))


def test_r8_runs_at_224_only_in_ceil_mode():
    """The ablation's r=8 row: flooring leaves nothing of the 7x7 last map; ceil mode pools it whole."""
    x = torch.zeros(1, 3, 224, 224)
    floor = scnet.create_model("scnet50", pooling_r=8).eval()
    with pytest.raises(scnet.InputTooSmallError, match=r"at least 225x225 px.*r=8 pooling"):
        floor(x)
    # features_only runs the stages without forward_features: the blocks' own check names the minimum.
    features = scnet.create_model("scnet50", features_only=True, pooling_r=8).eval()
    with pytest.raises(
        scnet.InputTooSmallError, match=r"r=8 pooling.*at least 8x8 \(network inputs of at least 225 px\), got 7x7"
    ):
        features(x)

    model = _model("scnet50", **R8_CEIL)
    pooled = []
    for block in model.layer4:
        block.scconv.k2[0].register_forward_hook(lambda m, i, o: pooled.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        assert model(x).shape == (1, 7)
    # layer4[0]'s SCConv pools the 14x14 map (k4 strides after it) as a whole window and a partial one per
    # axis; the other blocks pool the 7x7 map as one partial window.
    assert pooled == [(2, 2), (1, 1), (1, 1)]


# ----------------------------------------------------------------------------------------------- contracts

# (options, input size): just above each minimum (33 and 1 px), not a multiple of 32, so every stride rounds;
# at 36 px the r=8 model pools partial windows on layer1's 9x9 map and whole-map windows after it.
CONTRACT_CASES = [pytest.param(FLIPPED, 36, id="flipped"), pytest.param(R8_CEIL, 36, id="r8_ceil")]


@pytest.mark.slow
@pytest.mark.parametrize("options, size", CONTRACT_CASES)
def test_options_keep_torchscript_and_fx_contracts(options, size):
    """Scripted (fused reductions in training included), FX-traced, the trace scripted, torchvision's feature
    extractor."""
    model = _model("scnet50", **options)
    x = _input(size)
    with torch.no_grad():
        want = model(x)
        scripted = torch.jit.script(copy.deepcopy(model))
        _close(scripted(x), want)
        # In training the scripted model runs the fused path: one 1x1 conv for both reductions, 16 fewer convs.
        plain = copy.deepcopy(model).train()
        plain.set_fused(False)
        assert _conv_calls(scripted.train(), x) == _conv_calls(plain, x) - 16
        traced = torch.fx.symbolic_trace(copy.deepcopy(model))
        _close(traced(x), want)
        _close(torch.jit.script(traced)(x), want)
        extractor = create_feature_extractor(model, return_nodes=["layer4"])
        _close(model.forward_head(extractor(x)["layer4"]), want)
    if model.min_input_size > 1:  # the check is a node of the traced graph, with this model's minimum
        with pytest.raises(scnet.InputTooSmallError, match=rf"(?<!\d){model.min_input_size}(?!\d)"):
            traced(_input(model.min_input_size - 1))


@pytest.mark.slow
@pytest.mark.parametrize("options, size", CONTRACT_CASES)
def test_options_keep_compile_and_export_contracts(options, size):
    """torch.compile(fullgraph=True) through AOTAutograd, forward and backward, and torch.export.

    float64: in train mode BN normalises the 2x2 and 3x3 last maps of a 36 px batch of two by their own
    statistics, which amplifies float32 rounding of the compiled kernels to ~1e-3 of the logits. One block of
    each kind (tests.utils.shallow_): the options reach every SCConv alike
    (test_options_reach_every_scconv_and_keep_the_state_dict).
    """
    torch._dynamo.reset()
    model = shallow_(_model("scnet50", **options)).double().train()
    compiled_copy = copy.deepcopy(model)
    x = _input(size, dtype=torch.float64)
    got = torch.compile(compiled_copy, fullgraph=True, backend="aot_eager")(x)
    want = model(x)
    _close(got, want)
    got.sum().backward()
    want.sum().backward()
    for (key, p), (_, q) in zip(compiled_copy.named_parameters(), model.named_parameters(), strict=True):
        _close(p.grad, q.grad, msg=key)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,))
    with torch.no_grad():
        _close(program.module()(x), model(x))
        _close(program.module()(x * 0.5), model(x * 0.5))


@pytest.mark.slow
def test_inductor_ceil_mode_scconv_train_step():
    """The default backend (inductor, as the trainer's model.compile uses it) on SCConv's ceil-mode pool, where
    the divisor of each partial window is computed in generated code: 13x11 maps, r=8, forward and backward.
    The plain layers: the lean kernels' ops under inductor are test_contracts' (the pool is not in them)."""
    torch._dynamo.reset()
    conv = randomize_(SCConv(8, stride=2, **R8_CEIL), seed=1).train()
    conv.fused = False
    compiled_copy = copy.deepcopy(conv)
    x = _input((13, 11), channels=8).requires_grad_()
    got = torch.compile(compiled_copy, fullgraph=True)(x)
    want = conv(x)
    _close(got, want)
    got.sum().backward()
    want.sum().backward()
    for (key, p), (_, q) in zip(compiled_copy.named_parameters(), conv.named_parameters(), strict=True):
        _close(p.grad, q.grad, msg=key)
