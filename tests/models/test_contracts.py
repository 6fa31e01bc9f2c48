"""The model contracts of the timm/torchvision ecosystem, for every SC family, in train and eval mode.

TorchScript, FX tracing (torch.fx, torchvision's feature extraction, timm's FeatureGraphNet),
``forward_intermediates`` / ``prune_intermediate_layers`` as on timm's ResNet, ``min_input_size``,
``torch.compile(fullgraph=True)`` and ``torch.export``. Inputs sit just above the minimum size
(97 px) so the suite stays fast; weights and BN statistics are random, so a mis-wired path shows.
The 101-layer models run them through their 50-layer twins, whose code they are (checked here); the eval-mode
bit-equality of FX and eager outputs, which depends on shapes as well, runs on every name.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torchvision.models.feature_extraction import create_feature_extractor

import scnet
from scnet.models import SCConv

from ..utils import EXPECTED_BASELINES, is_deep, randomize_, shallow_

NAMES = list(EXPECTED_BASELINES)
MODES = ["train", "eval"]
SIZE = 100  # just above the minimum, and not a multiple of 32: every stride rounds
NUM_CLASSES = 7
# Each feature map's node/module name, as feature_info declares it.
FEATURE_NODES = ("relu", "layer1", "layer2", "layer3", "layer4")

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:FutureWarning",
    "ignore:`torch.jit.script_method` is deprecated:FutureWarning",
    # Raised by TorchScript about torch.fx.GraphModule's own __init__ when a traced module is scripted.
    "ignore:The TorchScript type system doesn't support instance-level annotations:UserWarning",
)


# The 101-layer models repeat their 50-layer twin's blocks (checked by test_deep_models_repeat_their_twins_code):
# scripting, tracing, dynamo, export and the feature APIs follow the classes' code, not the depth, so the
# checks (7 minutes of CI for the four deep names) run on the twins only.
TWINS = [n for n in NAMES if not is_deep(n)]


def _model(name: str, mode: str = "eval", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = randomize_(scnet.create_model(name, num_classes=NUM_CLASSES, **kwargs), seed=1)
    return model.train(mode == "train")


def _graph_model(name: str, mode: str = "eval") -> torch.nn.Module:
    """:func:`_model` for the checks that trace, compile or export a graph: SCNet-50 whole, its twins with one
    block of each kind (tests.utils.shallow_). What a twin adds to SCNet-50 (deep stem, avg-down, avd, grouped
    convs, SE) is in those blocks; the 11 repeats would only make the trace longer (~15 s a case on 2 cores)."""
    model = _model(name, mode)
    return model if name == "scnet50" else shallow_(model)


def _input(size: int = SIZE, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(3))


def _close(got: torch.Tensor, want: torch.Tensor, msg: str = "") -> None:
    """Equal up to rounding, relative to the tensor's scale (random weights give logits and gradients of
    1e2-1e7 in a 101-layer net): fused and layer-by-layer paths, or other kernels, add in other orders."""
    scale = max(float(want.detach().abs().max()), 1.0)
    tol = 1e-9 if want.dtype == torch.float64 else 1e-4
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * scale, msg=msg)


def _conv_calls(fn, *args) -> int:
    """How many convolutions one call of ``fn`` runs (counted by the profiler, so scripted code counts too)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            fn(*args)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::convolution")


@contextlib.contextmanager
def _several_threads() -> Iterator[None]:
    """At least two threads (conftest sets one). oneDNN shares a convolution's work among threads by its shapes, so
    a 1x1 conv with twice the outputs summed in another order than two half-width ones did with two threads, but
    gave the same bits with one: a bit-equality check must see how users run (several threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(before, 2))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def _twin(name: str) -> str:
    return name.replace("101", "50")


@pytest.mark.parametrize("name", [n for n in NAMES if is_deep(n)])
def test_deep_models_repeat_their_twins_code(name):
    """What the twin-only checks rest on: a 101-layer model is its 50-layer twin's class, built from the
    same module classes with the same per-block switches, only more blocks in its third stage."""
    with torch.device("meta"):
        deep, twin = scnet.create_model(name), scnet.create_model(_twin(name))
    assert type(deep) is type(twin)

    def switches(model: torch.nn.Module) -> set[tuple]:
        # A module's class and the settings that choose its code path (stride, groups, avd, pooling); not widths.
        out = set()
        for m in model.modules():
            items = vars(m).items()
            flags = {k: v for k, v in items if isinstance(v, bool | str | tuple) and not k.startswith("_")}
            flags |= {k: v for k, v in items if k in ("groups", "pooling_r", "stride", "dilation")}
            out.add((type(m).__qualname__, tuple(sorted(flags.items()))))
        return out

    assert switches(deep) == switches(twin)
    assert [len(deep.get_submodule(f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    assert [len(twin.get_submodule(f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]


# ----------------------------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TWINS)
def test_torchscript_gives_the_eager_outputs(name, mode):
    eager = _model(name, mode)
    scripted = torch.jit.script(copy.deepcopy(eager))
    x = _input()
    if mode == "eval":  # the same kernels in the same order: bit-equal, as timm's FX test asks of traced code
        with torch.inference_mode(), _several_threads():
            assert torch.equal(scripted(x), eager(x))
    else:
        _close(scripted(x), eager(x))
        # The fused BN's running statistics are written back in scripted code too.
        want, got = _bn_buffers(eager), _bn_buffers(scripted)
        for key in want:
            _close(got[key].float(), want[key].float(), msg=key)


@pytest.mark.slow
def test_torchscript_runs_the_fused_reductions_in_training_only():
    """In training, scripted code takes the fused 1x1 path (one conv for both reductions), as eager code does; in
    evaluation both run the layers one by one, the arithmetic of FX graphs."""
    model = _model("scnet50", "train")
    plain = copy.deepcopy(model)
    plain.set_fused(False)
    x = _input()
    fused_calls, plain_calls = _conv_calls(model, x), _conv_calls(plain, x)
    assert fused_calls == plain_calls - 16  # one conv fewer in each of the 16 blocks
    scripted = torch.jit.script(copy.deepcopy(model))
    assert _conv_calls(scripted, x) == fused_calls
    assert _conv_calls(model.eval(), x) == _conv_calls(scripted.eval(), x) == plain_calls
    # A frozen BN cannot be fused: scripted code must see it, as eager code does.
    frozen = freeze_batch_norm_2d(copy.deepcopy(model)).train()
    assert _conv_calls(frozen, x) == plain_calls
    assert _conv_calls(torch.jit.script(frozen), x) == plain_calls


# ----------------------------------------------------------------------------------------------- FX


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TWINS)
def test_fx_trace_forward_backward_and_script(name, mode):
    # float64: in training the traced graph runs the reductions layer by layer, eager code fused; gradients of random
    # weights are large, and float32 rounding would hide a real difference or invent one.
    eager = _graph_model(name, mode).double()
    traced = torch.fx.symbolic_trace(copy.deepcopy(eager))
    x = _input().double()
    y = torch.randint(0, NUM_CLASSES, (2,), generator=torch.Generator().manual_seed(4))
    for model in (eager, traced):
        F.cross_entropy(model(x), y).backward()
    # A GraphModule holds the modules in the order the graph first uses them: match gradients by name.
    traced_params = dict(traced.named_parameters())
    assert traced_params.keys() == dict(eager.named_parameters()).keys()
    for key, want in eager.named_parameters():
        _close(traced_params[key].grad, want.grad, msg=key)
    _close(torch.jit.script(traced)(x), eager(x))
    # The size check is a node of the graph: the traced module refuses small inputs as eager code does.
    with pytest.raises(scnet.InputTooSmallError, match=r"(?<!\d)97(?!\d)"):
        traced(_input(96).double())


# Every name, the deep ones too: whether two computations of one value agree to the bit depends on the kernels
# chosen for each shape (widths, map sizes), and a deep model's shapes are not all its twin's (scnet101_v1d's
# stem). At 97 px and batch 1 (timm's FX test: its min_input_size) the check costs a few seconds a model.
@pytest.mark.parametrize("name", NAMES)
def test_fx_eval_output_is_bit_equal_to_eager(name):
    """timm's test_model_forward_fx: in eval mode the traced graph's output equals eager code's exactly
    (``torch.equal``, not within rounding), so both must run the same kernels in the same order."""
    model = _model(name)
    traced = torch.fx.symbolic_trace(model)
    x = _input(97, batch=1)
    with torch.inference_mode(), _several_threads():
        want = model(x)
        assert torch.equal(traced(x), want)


@pytest.mark.parametrize("name", TWINS)
def test_torchvision_feature_extractor(name):
    model = _model(name, "train")
    extractor = create_feature_extractor(model, return_nodes={n: n for n in FEATURE_NODES})
    x = _input()
    features = extractor(x)
    with torch.no_grad():
        want = model.eval().forward_intermediates(x, intermediates_only=True)
    extractor.eval()
    got = extractor(x)
    for node, w in zip(FEATURE_NODES, want, strict=True):
        _close(got[node], w, msg=node)
    scripted = torch.jit.script(extractor)
    for node, w in zip(FEATURE_NODES, want, strict=True):
        _close(scripted(x)[node], w, msg=node)
    # Backward through every map (the extractor was in train mode for this one).
    sum(f.mean() for f in features.values()).backward()
    assert all(p.grad is not None for p in extractor.parameters())


@pytest.mark.parametrize("name", TWINS)
def test_feature_info_is_the_same_for_every_feature_class(name):
    """timm's five wrappers, and scnet.create_model(features_only=True), report one feature_info and one output."""
    x = _input()
    reference = scnet.create_model(name, features_only=True).eval()
    info = reference.feature_info
    assert info.module_name() == list(FEATURE_NODES)
    with torch.no_grad():
        want = reference(x)
        for feature_cls in ("list", "dict", "hook", "getter", "fx"):
            torch.manual_seed(0)
            wrapped = timm.create_model(name, features_only=True, feature_cls=feature_cls).eval()
            assert wrapped.feature_info.channels() == info.channels(), feature_cls
            assert wrapped.feature_info.reduction() == info.reduction(), feature_cls
            assert wrapped.feature_info.module_name() == info.module_name(), feature_cls
            out = wrapped(x)
            out = list(out.values()) if isinstance(out, dict) else out
            assert [tuple(o.shape) for o in out] == [tuple(w.shape) for w in want], feature_cls


def test_feature_classes_compute_the_same_maps(tmp_path):
    """Beyond shapes: the fx and getter wrappers of one weights file give the maps of the list wrapper."""
    torch.manual_seed(0)
    weights = tmp_path / "scnet50.pth"
    torch.save(randomize_(scnet.create_model("scnet50"), seed=1).state_dict(), weights)
    x = _input()
    outputs = {}
    for feature_cls in ("list", "getter", "fx"):
        model = timm.create_model(
            "scnet50",
            features_only=True,
            feature_cls=feature_cls,
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(weights)),
        ).eval()
        with torch.no_grad():
            outputs[feature_cls] = model(x)
    for feature_cls in ("getter", "fx"):
        for got, want in zip(outputs[feature_cls], outputs["list"], strict=True):
            _close(got, want, msg=feature_cls)


# ----------------------------------------------------------------------------------------------- input size


@pytest.mark.parametrize("name", TWINS)
def test_min_input_size_is_declared_and_true(name):
    model = _model(name)
    declared = model.pretrained_cfg["min_input_size"]
    minimum = declared[-1]
    assert declared == (3, minimum, minimum)
    with torch.no_grad():
        assert model.forward_features(_input(minimum)).shape[-2:] == (4, 4)  # ceil(97 / 32): one r=4 window
        with pytest.raises(scnet.InputTooSmallError, match=rf"(?<!\d){minimum}(?!\d)"):
            model.forward_features(_input(minimum - 1))
        for feature_cls in ("list", "getter", "fx"):
            features = timm.create_model(name, features_only=True, feature_cls=feature_cls).eval()
            assert features.pretrained_cfg["min_input_size"] == declared
            assert features(_input(minimum))[-1].shape[-2:] == (4, 4), feature_cls


# ----------------------------------------------------------------------------------------------- intermediates


# A call of forward_intermediates and the feature maps (feature_info indices) it returns, as timm documents them:
# None = all, an int n = the last n, negative indices count from the end.
INTERMEDIATE_CALLS = [
    ({}, [0, 1, 2, 3, 4]),
    ({"indices": 2}, [3, 4]),
    ({"indices": [0, 2]}, [0, 2]),
    ({"indices": [-1], "stop_early": True}, [4]),
    ({"indices": [1], "stop_early": True, "intermediates_only": True}, [1]),
    ({"indices": (0, 3), "norm": True, "output_fmt": "NCHW"}, [0, 3]),
]


def _shapes(out) -> object:
    """Batch and spatial size of every returned map (channels differ where the stems do: scnet101_v1d's
    deep stem is 64-64-128 as released, timm's resnet101d's 32-32-64)."""
    if isinstance(out, list):
        return [(t.shape[0], *t.shape[2:]) for t in out]
    return (out[0].shape[0], *out[0].shape[2:]), _shapes(out[1])


def _channels(out) -> list[int]:
    maps = out if isinstance(out, list) else out[1]
    return [t.shape[1] for t in maps]


@pytest.mark.parametrize("name", TWINS)
def test_forward_intermediates_like_timm_resnet(name):
    """Same outputs (count, order, shapes) as the timm baseline for the same call; values from our own forward."""
    model = _model(name)
    baseline = timm.create_model(EXPECTED_BASELINES[name], num_classes=NUM_CLASSES).eval()
    x = _input()
    with torch.no_grad():
        channels = [f["num_chs"] for f in model.feature_info]
        for kwargs, indices in INTERMEDIATE_CALLS:
            got = model.forward_intermediates(x, **kwargs)
            assert _shapes(got) == _shapes(baseline.forward_intermediates(x, **kwargs)), kwargs
            assert _channels(got) == [channels[i] for i in indices], kwargs
        final, maps = model.forward_intermediates(x)
        _close(final, model.forward_features(x))
        _close(maps[-1], final)
        _close(model.forward_head(final), model(x))
        stopped, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        _close(early[0], maps[1])
        _close(stopped, maps[1])  # nothing ran after the last requested stage
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(scnet.InputTooSmallError):
        model.forward_intermediates(_input(96))


@pytest.mark.parametrize("indices", [1, [1, 2], [0], (0, 4), 4])
@pytest.mark.parametrize("name", TWINS)
def test_prune_intermediate_layers_like_timm_resnet(name, indices):
    model = _model(name)
    baseline = timm.create_model(EXPECTED_BASELINES[name], num_classes=NUM_CLASSES).eval()
    x = _input()
    with torch.no_grad():
        want = model.forward_intermediates(x, intermediates_only=True)
        kept = model.prune_intermediate_layers(indices)
        assert kept == baseline.prune_intermediate_layers(indices)
        assert model.num_classes == baseline.num_classes == 0
        assert model.num_features == model.feature_info[max(kept)]["num_chs"]
        got = model.forward_intermediates(x, indices=kept, intermediates_only=True)
        for i, g in zip(kept, got, strict=True):
            _close(g, want[i], msg=str(i))
        out = model(x)  # no head: the last kept map
        assert out.shape[1] == model.num_features and out.shape[2:] == baseline(x).shape[2:]
    if max(kept) < 4:
        assert not any(p.numel() for p in model.layer4.parameters())


# ----------------------------------------------------------------------------------------------- compile / export


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", TWINS)
def test_compile_fullgraph(name, mode):
    """No graph break (fullgraph=True raises on one). Train: forward and backward through AOTAutograd
    (the aot_eager backend: every graph torch.compile builds, without inductor's C++ codegen), where the lean
    kernels run as custom ops; in float64 against the plain layers (set_fused(False)), the layers as drawn."""
    torch._dynamo.reset()
    eager = _graph_model(name, mode)
    x = _input()
    if mode == "train":
        eager, x = eager.double(), x.double()
    compiled_copy = copy.deepcopy(eager)
    if mode == "train":
        eager.set_fused(False)
    backend = "aot_eager" if mode == "train" else "eager"
    compiled = torch.compile(compiled_copy, fullgraph=True, backend=backend)
    got, want = compiled(x), eager(x)
    _close(got, want)
    if mode == "train":
        got.sum().backward()
        want.sum().backward()
        for (key, p), (_, q) in zip(compiled_copy.named_parameters(), eager.named_parameters(), strict=True):
            _close(p.grad, q.grad, msg=key)
        for key, value in _bn_buffers(eager).items():
            _close(_bn_buffers(compiled_copy)[key].float(), value.float(), msg=key)


@pytest.mark.slow
def test_compile_inductor_block_train_step():
    """The default backend (inductor, C++ codegen on CPU) on one strided SC block, forward and backward, in
    float64: the fused reductions with their BN write-back, SCConv's pooling, upsampling and gating, the lean
    kernels' custom ops and their traced backward. (A whole SCNet-50 takes about 3 minutes to compile on 2
    cores; its graphs are those checked above.)"""
    torch._dynamo.reset()
    block = randomize_(_model("scnet50", "train").layer2[0], seed=2).double()
    compiled_copy = copy.deepcopy(block)
    compiled = torch.compile(compiled_copy, fullgraph=True)
    x = torch.randn(2, 256, 24, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got, want = compiled(x), block(x)
    _close(got, want)
    got.sum().backward()
    want.sum().backward()
    for (key, p), (_, q) in zip(compiled_copy.named_parameters(), block.named_parameters(), strict=True):
        _close(p.grad, q.grad, msg=key)
    for key, value in _bn_buffers(block).items():
        _close(_bn_buffers(compiled_copy)[key].float(), value.float(), msg=key)


@pytest.mark.parametrize("name", TWINS)
def test_torch_export_equals_eager(name):
    model = _graph_model(name)
    x = _input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,))
    with torch.no_grad():
        _close(program.module()(x), model(x))
        _close(program.module()(_input(batch=2) * 0.5), model(_input(batch=2) * 0.5))


# ----------------------------------------------------------------------------------------------- SCConv alone


@pytest.mark.parametrize("mode", MODES)
def test_scconv_alone_scripts_and_traces(mode):
    """The operator by itself (as other networks would use it) keeps the contracts too."""
    conv = randomize_(SCConv(8, stride=2), seed=3).train(mode == "train")
    x = torch.randn(2, 8, 13, 11, generator=torch.Generator().manual_seed(6))
    want = copy.deepcopy(conv)(x)
    _close(torch.jit.script(copy.deepcopy(conv))(x), want)
    traced = torch.fx.symbolic_trace(copy.deepcopy(conv))
    _close(traced(x), want)
    _close(torch.jit.script(traced)(x), want)
    with pytest.raises(scnet.InputTooSmallError):
        traced(x[..., :3])
