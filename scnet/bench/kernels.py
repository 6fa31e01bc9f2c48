"""The SC block's training kernels checked on the machine at hand (``scnet-bench kernels``).

- :func:`check_parity`: one training step of an SC model by its shipped kernels (on CUDA the fused Triton ones),
  by the lean kernels and by the plain layers, all under the same autocast, each compared with the plain layers'
  step in float64: how far each is from the exact step (relative L2 error of the logits and of every
  parameter's gradient), whether the shipped step repeats bit for bit, and the running statistics it leaves.
- :func:`time_grouped_convs`: SC-ResNeXt's half-width grouped 3x3s (``k1`` and ``k3``, 2 channels per group), as
  two convolutions against one of twice the groups over both halves, forward and backward, per stage.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import scnet
from scnet.layers.dispatch import training_kernels
from scnet.models import BASELINES
from scnet.models.bottleneck import SCBottleneck
from scnet.runtime.precision import AMP_DTYPES, autocast

VARIANTS = {"shipped": (True, True), "lean": (True, False), "plain": (False, True)}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    b = b.double()
    return float((a.double() - b).norm() / b.norm().clamp_min(1e-300))


def _step(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training forward and backward: the logits and every parameter's gradient (the model is left as it is
    after the step, its running statistics updated)."""
    model.zero_grad(set_to_none=True)
    with autocast(x.device.type, amp_dtype):
        logits = model(x)
    F.cross_entropy(logits.float(), labels).backward()
    return logits.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _kernels_run(model: nn.Module, x: torch.Tensor) -> str:
    """Which kernels the model's first SC block runs in training on ``x``'s device (``layers/dispatch.py``)."""
    block = next(m for m in model.modules() if isinstance(m, SCBottleneck))
    fused = block.fused and block.scconv.fused
    with torch.enable_grad():  # the kernels of a training step, whatever the caller's grad mode
        return training_kernels(x, fused, block.triton, [block.k1[1], block.scconv.k3[1], block.scconv.k4[1]])


def _errors(
    logits: torch.Tensor, grads: dict[str, torch.Tensor], truth: tuple[torch.Tensor, dict[str, torch.Tensor]]
) -> dict[str, Any]:
    per_param = {n: _relative_error(g, truth[1][n]) for n, g in grads.items()}
    worst = max(per_param, key=per_param.__getitem__)
    return {
        "logits": _relative_error(logits, truth[0]),
        "grad_median": statistics.median(per_param.values()),
        "grad_max": per_param[worst],
        "grad_max_param": worst,
    }


def _build(model_name: str, device: torch.device, memory_format: torch.memory_format, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return scnet.create_model(model_name).to(device, memory_format=memory_format).train()


def check_parity(
    model: str = "scnet50",
    *,
    batch_size: int = 16,
    image_size: int = 224,
    amp: str = "bf16",
    channels_last: bool = True,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """One training step of ``model`` by each set of kernels against the exact (float64, plain layers) step.

    Returns, per variant (``shipped``: what training runs here, ``lean``, ``plain``) under ``amp``: the kernels
    that ran, the relative L2 error of the logits, the median and largest relative error of the parameter
    gradients (and which parameter); ``shipped_float32``: the shipped step without autocast against the plain
    layers' float32 step (rounding only); ``repeatable``: the shipped step run twice from the same state gave
    bit-identical gradients (cuDNN set deterministic for the check); ``running_stats_error``: the largest
    relative difference of the BN running statistics after the shipped and the plain float32 steps.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, not {amp!r}")
    if model not in BASELINES:
        raise ValueError(f"{model!r} is not an SC model; choose from {', '.join(sorted(BASELINES))}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(seed)
    x = (
        torch.randn(batch_size, 3, image_size, image_size, generator=gen)
        .to(dev)
        .contiguous(memory_format=memory_format)
    )
    labels = torch.randint(0, 1000, (batch_size,), generator=gen).to(dev)
    reference = _build(model, dev, memory_format, seed)
    truth_model = copy.deepcopy(reference).double()
    truth_model.set_fused(False)
    truth = _step(truth_model, x.double(), labels, None)
    del truth_model

    result: dict[str, Any] = {"model": model, "batch_size": batch_size, "image_size": image_size, "amp": amp}
    for name, (fused, triton) in VARIANTS.items():
        variant = copy.deepcopy(reference)
        variant.set_fused(fused, triton=triton)
        result[name] = {
            "kernels": _kernels_run(variant, x),
            **_errors(*_step(variant, x, labels, AMP_DTYPES[amp]), truth),
        }

    shipped, plain = copy.deepcopy(reference), copy.deepcopy(reference)
    plain.set_fused(False)
    float32 = [_step(m, x, labels, None) for m in (shipped, plain)]
    result["shipped_float32"] = _errors(*float32[0], float32[1])
    result["running_stats_error"] = max(
        _relative_error(a, b)
        for (n, a), (_, b) in zip(shipped.named_buffers(), plain.named_buffers(), strict=True)
        if a.is_floating_point()
    )
    result["repeatable"] = _repeatable(reference, x, labels, AMP_DTYPES[amp])
    result["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    return result


def _repeatable(reference: nn.Module, x: torch.Tensor, labels: torch.Tensor, amp_dtype: torch.dtype | None) -> bool:
    """The shipped step twice from the same state: bit-identical logits and gradients?"""
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        runs = [_step(copy.deepcopy(reference), x, labels, amp_dtype) for _ in range(2)]
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    (logits_a, grads_a), (logits_b, grads_b) = runs
    return torch.equal(logits_a, logits_b) and all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


# --------------------------------------------------------------------------------------- grouped convolutions


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after two untimed ones (cuDNN's choice, allocation)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_grouped_convs(
    *,
    batch_size: int = 256,
    image_size: int = 224,
    cardinality: int = 32,
    base_width: int = 4,
    amp: str = "bf16",
    device: str | None = None,
    repeats: int = 10,
) -> list[dict[str, Any]]:
    """Forward + backward seconds of SC-ResNeXt's two half-width grouped 3x3s (``k1`` on one half, ``k3`` on the
    other, ``cardinality`` groups each), as two convolutions and as one with ``2 * cardinality`` groups over both
    halves laid end to end (the same arithmetic), at each stage's stride-1 map size; channels_last, in the
    ``amp`` dtype. One row per stage: ``two_convs_seconds``, ``one_conv_seconds`` and ``speedup`` (> 1: one
    convolution is faster)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = AMP_DTYPES[amp] or torch.float32
    rows = []
    for stage, planes in enumerate((64, 128, 256, 512)):
        half = planes * base_width // 64 * cardinality // 2
        size = image_size // 4 // 2**stage
        two, one = _time_stage(batch_size, half, size, cardinality, dtype, dev, repeats)
        rows.append(
            {
                "stage": stage + 1,
                "channels": 2 * half,
                "size": size,
                "two_convs_seconds": two,
                "one_conv_seconds": one,
                "speedup": two / one,
            }
        )
    return rows


def _time_stage(
    batch: int, half: int, size: int, groups: int, dtype: torch.dtype, dev: torch.device, repeats: int
) -> tuple[float, float]:
    """Seconds of the two grouped convolutions and of the one with twice the groups, forward and backward."""
    gen = torch.Generator().manual_seed(size)

    def leaf(*shape: int) -> torch.Tensor:
        t = torch.randn(*shape, generator=gen).to(dev, dtype)
        return (t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t).requires_grad_()

    a, b, both = leaf(batch, half, size, size), leaf(batch, half, size, size), leaf(batch, 2 * half, size, size)
    w1, w3, weight = (
        leaf(half, half // groups, 3, 3),
        leaf(half, half // groups, 3, 3),
        leaf(2 * half, half // groups, 3, 3),
    )
    grad_half, grad_both = torch.ones_like(a), torch.ones_like(both)

    def two() -> None:
        F.conv2d(a, w1, padding=1, groups=groups).backward(grad_half)
        F.conv2d(b, w3, padding=1, groups=groups).backward(grad_half)

    def one() -> None:
        F.conv2d(both, weight, padding=1, groups=2 * groups).backward(grad_both)

    return _timed(two, dev, repeats), _timed(one, dev, repeats)
