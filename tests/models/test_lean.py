"""The lean training kernels (scnet/models/lean.py): same numbers as the plain layers, fewer saved tensors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import scnet
from scnet.bench.model import saved_activation_bytes
from scnet.layers.scconv import SCConv

from ..utils import randomize_, shallow_

CL = torch.channels_last


def _pair(name: str, memory_format=torch.contiguous_format, dtype=torch.float64, **kwargs):
    """The shipped model (lean kernels in training) and a copy run layer by layer, with random weights."""
    torch.manual_seed(0)
    lean = randomize_(scnet.create_model(name, num_classes=7, **kwargs), seed=1).to(dtype, memory_format=memory_format)
    plain = copy.deepcopy(lean)
    plain.set_fused(False)
    return lean.train(), plain.train()


def _input(memory_format=torch.contiguous_format, dtype=torch.float64, size: int = 112) -> torch.Tensor:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=dtype)
    return x.contiguous(memory_format=memory_format)


def _assert_same_step(lean, plain, x, rtol: float = 1e-9, grad_rtol: float = 1e-8) -> None:
    """One training forward/backward of each: outputs, every gradient and every BN buffer agree."""
    y = torch.tensor([1, 5])
    outs = []
    for model in (lean, plain):
        out = model(x)
        F.cross_entropy(out.float(), y).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=rtol, atol=0)
    for (n, p), (_, q) in zip(lean.named_parameters(), plain.named_parameters(), strict=True):
        scale = float(q.grad.abs().max())
        torch.testing.assert_close(p.grad, q.grad, rtol=grad_rtol, atol=grad_rtol * scale, msg=n)
    for (n, a), (_, b) in zip(lean.named_buffers(), plain.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=0, msg=n)
    assert int(lean.layer1[0].scconv.k3[1].num_batches_tracked) == 1


@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d", "sc_resnext50_32x4d", "sc_seresnet50"])
def test_channels_last_step_equals_layer_by_layer(name):
    """NCHW is covered by test_fused.py (the shipped path is the lean one there too); here channels_last,
    where the reductions run as two layers and the lean kernels take channels_last tensors."""
    lean, plain = _pair(name, CL)
    _assert_same_step(lean, plain, _input(CL))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, CL], ids=["nchw", "channels_last"])
def test_ablation_options_through_the_lean_kernels(memory_format):
    """Every calibration option the kernels handle themselves: no identity, bilinear, max and ceil pooling."""
    options = dict(pooling_r=2, pool_type="max", pool_ceil_mode=True, calib_identity=False, upsample="bilinear")
    lean, plain = _pair("scnet50_v1d", memory_format, **options)
    _assert_same_step(lean, plain, _input(memory_format, size=100))


@pytest.mark.parametrize("name", ["scnet50", "scnet50_v1d"])
def test_bf16_autocast_as_accurate_as_the_plain_layers(name):
    """Under autocast the kernels' convolutions run in bfloat16 as the plain layers' do: forward equal, and
    gradients as close to float64 ones as the plain layers' bfloat16 gradients are. A strided block
    (v1d: with its 3x3 average pool), default initialisation. Compiled: see
    test_compiled_bf16_autocast_as_accurate_as_the_plain_layers."""
    torch.manual_seed(0)
    model = scnet.create_model(name)
    block = model.layer2[0].train()
    x = torch.randn(4, 256, 32, 32, generator=torch.Generator().manual_seed(5))
    weights = torch.randn(4, 512, 16, 16, generator=torch.Generator().manual_seed(6))

    def run(fused: bool, amp: bool, dtype: torch.dtype):
        m = copy.deepcopy(block).to(dtype)
        m.apply(lambda mod: setattr(mod, "fused", fused) if hasattr(mod, "fused") else None)
        xi = x.to(dtype, copy=True).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = m(xi)
        (out.to(dtype) * weights.to(dtype)).sum().backward()
        grads = {"input": xi.grad, **{n: p.grad for n, p in m.named_parameters()}}
        return out, {k: g.double() for k, g in grads.items()}

    out_lean, lean = run(True, True, torch.float32)
    out_plain, plain = run(False, True, torch.float32)
    _, exact = run(False, False, torch.float64)
    assert out_lean.dtype == torch.bfloat16
    torch.testing.assert_close(out_lean, out_plain, rtol=0, atol=0)  # the same kernels in the same order
    for key, want in exact.items():
        err_lean = float((lean[key] - want).norm() / want.norm())
        err_plain = float((plain[key] - want).norm() / want.norm())
        assert err_lean <= 1.1 * err_plain + 1e-3, (key, err_lean, err_plain)


def test_standalone_scconv_lean_equals_plain():
    """SCConv alone (strided, grouped) trains with the calibration kernel and keeps the same numbers."""
    torch.manual_seed(0)
    lean = randomize_(SCConv(16, stride=2, groups=4), seed=3).double().train()
    plain = copy.deepcopy(lean)
    plain.fused = False
    x = torch.randn(2, 16, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    outs = [m(xi) for m, xi in zip((lean, plain), xs, strict=True)]
    for out in outs:
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-10, atol=1e-12)
    for (n, p), (_, q) in zip(lean.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=n)
    for (n, a), (_, b) in zip(lean.named_buffers(), plain.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)


def test_inference_and_frozen_bn_take_the_plain_layers():
    """No grad, eval mode or a non-stock BN: plain layers (the kernels assume training-mode BatchNorm2d)."""
    from timm.layers import freeze_batch_norm_2d

    lean, plain = _pair("scnet50")
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(lean(x), plain(x), rtol=0, atol=0)
    frozen = freeze_batch_norm_2d(copy.deepcopy(lean))
    frozen_plain = freeze_batch_norm_2d(copy.deepcopy(plain))
    torch.testing.assert_close(frozen(x), frozen_plain(x), rtol=1e-12, atol=0)


def test_grad_checkpointing_with_lean_kernels():
    """timm's checkpoint_seq re-runs each stage's forward in backward; the kernels stay exact there."""
    lean, plain = _pair("scnet50")
    for model in (lean, plain):
        model.set_grad_checkpointing(True)
    y = torch.tensor([1, 5])
    x = _input()
    for model in (lean, plain):
        F.cross_entropy(model(x), y).backward()
    for (n, p), (_, q) in zip(lean.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-8 * float(q.grad.abs().max()), msg=n)


@pytest.mark.parametrize(("name", "baseline"), [("scnet50", "resnet50"), ("sc_resnext50_32x4d", "resnext50_32x4d")])
def test_saved_activations_within_five_percent_of_the_baseline(name, baseline):
    """The issue's memory goal at 224 px: an SC model keeps at most 1.05x its ResNet's saved activations."""
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4, dtype=torch.long)
    sc = saved_activation_bytes(scnet.create_model(name).train(), x, y)
    base = saved_activation_bytes(scnet.create_model(baseline).train(), x, y)
    plain = scnet.create_model(name).train()
    plain.set_fused(False)
    layer_by_layer = saved_activation_bytes(plain, x, y)
    assert sc <= 1.05 * base
    assert layer_by_layer > 1.15 * base  # the goal is the kernels' doing: the plain layers keep far more


# ------------------------------------------------------------- compiled: torch.compile runs the custom ops


def _compiled(model: torch.nn.Module, backend: str = "aot_eager") -> torch.nn.Module:
    """``torch.compile(fullgraph=True)``; ``aot_eager`` runs AOTAutograd (functionalisation, the joint graph, the
    partition into forward and backward, the custom ops' fake kernels and traced backward) without inductor's
    code generation, so what is compared is the ops' arithmetic (inductor's: tests/models/test_contracts.py)."""
    torch._dynamo.reset()
    return torch.compile(model, backend=backend, fullgraph=True)


OPTIONS = dict(pooling_r=2, pool_type="max", pool_ceil_mode=True, calib_identity=False, upsample="bilinear")


def test_compiled_options_and_channels_last_equal_layer_by_layer():
    """Compiled training runs the lean kernels as custom ops (scnet::calibrated_conv, scnet::bn_relu_cat_conv):
    one step's output, every gradient and every BN buffer equal the eager plain layers' in float64, here in
    channels_last, with grouped 3x3s and every calibration option the kernels handle themselves (the default
    options in NCHW: test_contracts' test_compile_fullgraph). One block of each kind (shallow_)."""
    lean, plain = (shallow_(m) for m in _pair("sc_resnext50_32x4d", CL, **OPTIONS))
    _assert_same_step(_compiled(lean), plain, _input(CL, size=100))


@pytest.mark.parametrize("backend", ["eager", "compiled"])
def test_a_block_keeps_seven_fewer_half_width_maps(backend):
    """What the kernels stop keeping, counted against the layer-by-layer block: SCConv's gate, k3's BN output
    and their product, the two branches' ReLU outputs and their concatenation (two), one half-width map
    each; they keep one more r x r pooled map (the context, to recompute the gate). Channels_last, where
    the reductions are two layers in both paths, so nothing else differs.

    Compiled (AOTAutograd), the graph keeps byte for byte what the eager kernels keep: the custom ops are in it,
    not a silent fallback to the plain layers, which keep the seven maps again."""
    lean, plain = _pair("scnet50", CL)
    # Pooled to logits, so the counter's cross-entropy step applies; the head saves the same in both.
    heads = [torch.nn.Sequential(m.layer1[1], torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()) for m in (lean, plain)]
    x = torch.randn(2, 256, 24, 24, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    y = torch.zeros(2, dtype=torch.long)
    eager = [saved_activation_bytes(head, x, y) for head in heads]
    half = lean.layer1[1].bn1_a.num_features  # 32 channels
    fewer = (7 * (2 * half * 24 * 24) - 2 * half * 6 * 6) * 8
    if backend == "eager":
        assert eager[1] - eager[0] == fewer
        return
    compiled = [saved_activation_bytes(_compiled(head), x, y) for head in heads]
    assert compiled[0] == eager[0]
    assert compiled[1] - compiled[0] >= fewer


def test_compiled_bf16_autocast_as_accurate_as_the_plain_layers():
    """Compiled under bf16 autocast (the ops get the convolution weight cast as autocast would, and run with
    autocast off): output in bfloat16, gradients as close to float64 ones as the plain layers' bfloat16
    gradients, eager or compiled, are. The strided v1d block (3x3 average pool), default initialisation."""
    torch.manual_seed(0)
    block = scnet.create_model("scnet50_v1d").layer2[0].train()
    x = torch.randn(4, 256, 32, 32, generator=torch.Generator().manual_seed(5))
    weights = torch.randn(4, 512, 16, 16, generator=torch.Generator().manual_seed(6))

    def grads(fused: bool, compiled: bool, amp: bool = True, dtype: torch.dtype = torch.float32):
        m = copy.deepcopy(block).to(dtype)
        m.apply(lambda mod: setattr(mod, "fused", fused) if hasattr(mod, "fused") else None)
        xi = x.to(dtype, copy=True).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = (_compiled(m) if compiled else m)(xi)
        assert out.dtype == (torch.bfloat16 if amp else dtype)
        (out.to(dtype) * weights.to(dtype)).sum().backward()
        return {"input": xi.grad.double(), **{n: p.grad.double() for n, p in m.named_parameters()}}

    exact = grads(False, False, amp=False, dtype=torch.float64)
    lean = grads(True, True)
    plain = [grads(False, False), grads(False, True)]
    for key, want in exact.items():
        err_lean = float((lean[key] - want).norm() / want.norm())
        err_plain = max(float((p[key] - want).norm() / want.norm()) for p in plain)
        assert err_lean <= 1.1 * err_plain + 1e-3, (key, err_lean, err_plain)


@pytest.mark.parametrize("dtypes", ["float64", "bf16-autocast"])
def test_custom_ops_pass_opcheck(dtypes):
    """torch.library.opcheck: schema, fake kernels against the real ones (shapes, dtypes, strides), autograd
    registration. Channels_last inputs; bf16 activations with float32 BN parameters and
    statistics are what autocast hands the ops (the fake BN kernel's statistics once differed in dtype there)."""
    from scnet.layers import lean as ops

    act = torch.float64 if dtypes == "float64" else torch.bfloat16
    par = torch.float64 if dtypes == "float64" else torch.float32
    g = torch.Generator().manual_seed(0)

    def t(*shape, dtype=act, grad=True):
        value = torch.randn(*shape, generator=g, dtype=dtype)
        if len(shape) == 4:
            value = value.contiguous(memory_format=CL)
        return value.requires_grad_(grad)

    def bn(n):
        return [t(n, dtype=par), t(n, dtype=par), t(n, dtype=par, grad=False), t(n, dtype=par, grad=False).abs()]

    calibrated = (t(2, 8, 13, 11), t(2, 8, 13, 11), t(2, 8, 3, 2), *bn(8), t(8, 4, 3, 3), 0.1, 1e-5, True)
    # AOT dispatch is what the compiled tests above run.
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(ops._calibrated_conv_op, (*calibrated, "nearest", [2, 1, 1, 2]), test_utils=checks)
    torch.library.opcheck(ops._calibrated_conv_op, (*calibrated, "bilinear", [1, 1, 1, 2]), test_utils=checks)
    cat = (t(2, 4, 9, 9), t(2, 6, 9, 9), *bn(4), *bn(6), t(12, 10, 1, 1), 0.1, 1e-5, 0.2, 1e-3)
    torch.library.opcheck(ops._bn_relu_cat_conv_op, (*cat, 0), test_utils=checks)
    torch.library.opcheck(ops._bn_relu_cat_conv_op, (*cat, 2), test_utils=checks)
