"""Triton kernels for training-mode BatchNorm (optionally followed by ReLU) on strided 4-D maps.

Every kernel takes a map as a pointer and four strides (N, C, H, W), so the same kernel reads or writes NCHW,
channels_last and a channel slice of a wider map (``act[:, :c]``) alike: that is how the SC block's
BN-ReLU-concat writes both halves of its concatenation in place, and how the merged 1x1 reduction's output is
split into its two halves, with no copy in either direction.

Reductions are deterministic: each program reduces one tile and writes its partial result to its own row of a
``(tiles, C)`` buffer; the rows are then combined in a fixed order (statistics: by Chan et al.'s pairwise
formula, in :func:`_stats_finalize_kernel`; gradient sums: by ``torch.sum`` over the rows). No atomics, so a
step gives the same bits every time (``train.deterministic``).

Arithmetic is done in float32 (float64 for float64 maps) and rounded once into the output's dtype. The launchers
below allocate with torch and skip the launch on fake or meta tensors, so the custom ops built on them serve as
their own fake implementations under ``torch.compile``. Import this module only where triton is installed;
``TRITON_INTERPRET=1`` set before the import runs the kernels on CPU tensors (the tests do).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn
from torch._subclasses.fake_tensor import is_fake

# Elements per tile: enough work per program to hide memory latency, few enough registers for any width.
TILE_ELEMENTS = 4096
MAX_BLOCK_C = 64


@triton.jit
def _tile_offsets(pid_p, pid_c, P, C, HW, W, s_n, s_c, s_h, s_w, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets and mask of one (pixels x channels) tile of a strided map; pixels run over (n, h, w) flattened."""
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    n = p // HW
    hw = p % HW
    # int64: a batch of wide maps passes 2**31 elements.
    pixel = n.to(tl.int64) * s_n + (hw // W).to(tl.int64) * s_h + (hw % W).to(tl.int64) * s_w
    offsets = pixel[:, None] + c.to(tl.int64)[None, :] * s_c
    mask = (p < P)[:, None] & (c < C)[None, :]
    return offsets, mask, c


@triton.jit
def channel_vector(ptr, c, cmask, ACC: tl.constexpr):
    """One value per channel of the tile (a BN parameter or statistic), in the compute dtype."""
    return tl.load(ptr + c, mask=cmask, other=0.0).to(ACC)


@triton.jit
def bn_vectors(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, c, cmask, ACC: tl.constexpr):
    """A BN's batch mean, inverse std, weight and bias for the tile's channels."""
    mean = channel_vector(mean_ptr, c, cmask, ACC)
    invstd = channel_vector(invstd_ptr, c, cmask, ACC)
    return mean, invstd, channel_vector(weight_ptr, c, cmask, ACC), channel_vector(bias_ptr, c, cmask, ACC)


@triton.jit
def _affine(y, mean, invstd, weight, bias):
    """BN's output before rounding, ``(y - mean) * invstd * weight + bias`` as ``y * scale + shift``: the one
    formula every kernel uses, so that backward's ReLU mask is forward's."""
    scale = invstd * weight
    shift = bias - mean * scale
    return y * scale[None, :] + shift[None, :]


@triton.jit
def _inverse_sqrt(v, ACC: tl.constexpr):
    """``1 / sqrt(v)`` correctly rounded, as torch computes BN's inverse std (float32's default sqrt and division
    are approximate on a GPU; the _rn forms exist for float32 only, float64's are exact)."""
    if ACC == tl.float64:
        return 1.0 / tl.sqrt(v)
    return tl.div_rn(tl.full(v.shape, 1.0, tl.float32), tl.sqrt_rn(v))


@triton.jit
def _stats_partial_kernel(
    y_ptr,
    mean_ptr,
    m2_ptr,
    P,
    C,
    HW,
    W,
    s_n,
    s_c,
    s_h,
    s_w,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Mean and sum of squared deviations of each channel over one tile of pixels (two passes in registers)."""
    pid_p = tl.program_id(0)
    offsets, mask, c = _tile_offsets(pid_p, tl.program_id(1), P, C, HW, W, s_n, s_c, s_h, s_w, BLOCK_P, BLOCK_C)
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(ACC)
    count = tl.minimum(P - pid_p * BLOCK_P, BLOCK_P).to(ACC)
    mean = tl.sum(y, axis=0) / count
    deviation = tl.where(mask, y - mean[None, :], 0.0)
    row = pid_p.to(tl.int64) * C + c
    tl.store(mean_ptr + row, mean, mask=c < C)
    tl.store(m2_ptr + row, tl.sum(deviation * deviation, axis=0), mask=c < C)


@triton.jit
def _stats_finalize_kernel(
    mean_part_ptr,
    m2_part_ptr,
    mean_ptr,
    invstd_ptr,
    running_mean_ptr,
    running_var_ptr,
    T,
    P,
    C,
    momentum,
    eps,
    TILE_P: tl.constexpr,
    UPDATE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Batch mean and inverse std per channel from the tiles' partial results, in a fixed order; with ``UPDATE``,
    the running statistics as ``nn.BatchNorm2d`` keeps them (unbiased variance)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    total = tl.zeros([BLOCK_C], dtype=ACC)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        count = tl.minimum(P - t * TILE_P, TILE_P).to(ACC)
        mask = (t < T)[:, None] & (c < C)[None, :]
        part = tl.load(mean_part_ptr + t.to(tl.int64)[:, None] * C + c[None, :], mask=mask, other=0.0)
        total += tl.sum(tl.where(mask, part * count[:, None], 0.0), axis=0)
    mean = total / P
    # Chan's combination: the tiles' own squared deviations plus their means' deviations from the whole mean.
    m2 = tl.zeros([BLOCK_C], dtype=ACC)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        count = tl.minimum(P - t * TILE_P, TILE_P).to(ACC)
        mask = (t < T)[:, None] & (c < C)[None, :]
        rows = t.to(tl.int64)[:, None] * C + c[None, :]
        part_mean = tl.load(mean_part_ptr + rows, mask=mask, other=0.0)
        part_m2 = tl.load(m2_part_ptr + rows, mask=mask, other=0.0)
        d = part_mean - mean[None, :]
        m2 += tl.sum(tl.where(mask, part_m2 + count[:, None] * d * d, 0.0), axis=0)
    var = m2 / P
    cmask = c < C
    tl.store(mean_ptr + c, mean, mask=cmask)
    tl.store(invstd_ptr + c, _inverse_sqrt(var + eps, ACC), mask=cmask)
    if UPDATE:
        running_mean = tl.load(running_mean_ptr + c, mask=cmask, other=0.0).to(ACC)
        running_var = tl.load(running_var_ptr + c, mask=cmask, other=0.0).to(ACC)
        unbiased = var * P / tl.maximum(P - 1, 1)
        new_mean = (1.0 - momentum) * running_mean + momentum * mean
        new_var = (1.0 - momentum) * running_var + momentum * unbiased
        tl.store(running_mean_ptr + c, new_mean.to(running_mean_ptr.dtype.element_ty), mask=cmask)
        tl.store(running_var_ptr + c, new_var.to(running_var_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _apply_kernel(
    y_ptr,
    out_ptr,
    mean_ptr,
    invstd_ptr,
    weight_ptr,
    bias_ptr,
    P,
    C,
    HW,
    W,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    os_n,
    os_c,
    os_h,
    os_w,
    RELU: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """``out = [relu](bn(y))`` with the given statistics; ``out`` may be a channel slice of a wider map."""
    pid_p, pid_c = tl.program_id(0), tl.program_id(1)
    y_offsets, mask, c = _tile_offsets(pid_p, pid_c, P, C, HW, W, ys_n, ys_c, ys_h, ys_w, BLOCK_P, BLOCK_C)
    out_offsets, _, _ = _tile_offsets(pid_p, pid_c, P, C, HW, W, os_n, os_c, os_h, os_w, BLOCK_P, BLOCK_C)
    cmask = c < C
    mean, invstd, weight, bias = bn_vectors(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, c, cmask, ACC)
    y = tl.load(y_ptr + y_offsets, mask=mask, other=0.0).to(ACC)
    out = _affine(y, mean, invstd, weight, bias)
    if RELU:
        out = tl.maximum(out, 0.0)
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _masked_grad(g, y, mean, invstd, weight, bias, RELU: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """The gradient at BN's output: through the ReLU, whose output was forward's value rounded to ``OUT_DTYPE``."""
    if RELU:
        out = _affine(y, mean, invstd, weight, bias).to(OUT_DTYPE)
        g = tl.where(out > 0, g, 0.0)
    return g


@triton.jit
def _backward_reduce_kernel(
    g_ptr,
    y_ptr,
    mean_ptr,
    invstd_ptr,
    weight_ptr,
    bias_ptr,
    sum_g_ptr,
    sum_gx_ptr,
    P,
    C,
    HW,
    W,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    RELU: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Per tile and channel: the sums of the gradient at BN's output and of its product with the normalised input."""
    pid_p, pid_c = tl.program_id(0), tl.program_id(1)
    g_offsets, mask, c = _tile_offsets(pid_p, pid_c, P, C, HW, W, gs_n, gs_c, gs_h, gs_w, BLOCK_P, BLOCK_C)
    y_offsets, _, _ = _tile_offsets(pid_p, pid_c, P, C, HW, W, ys_n, ys_c, ys_h, ys_w, BLOCK_P, BLOCK_C)
    cmask = c < C
    mean, invstd, weight, bias = bn_vectors(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, c, cmask, ACC)
    g = tl.load(g_ptr + g_offsets, mask=mask, other=0.0).to(ACC)
    y = tl.load(y_ptr + y_offsets, mask=mask, other=0.0).to(ACC)
    g = _masked_grad(g, y, mean, invstd, weight, bias, RELU, OUT_DTYPE)
    xhat = tl.where(mask, (y - mean[None, :]) * invstd[None, :], 0.0)
    row = pid_p.to(tl.int64) * C + c
    tl.store(sum_g_ptr + row, tl.sum(g, axis=0), mask=cmask)
    tl.store(sum_gx_ptr + row, tl.sum(g * xhat, axis=0), mask=cmask)


@triton.jit
def _backward_apply_kernel(
    g_ptr,
    y_ptr,
    out_ptr,
    mean_ptr,
    invstd_ptr,
    weight_ptr,
    bias_ptr,
    sum_g_ptr,
    sum_gx_ptr,
    P,
    C,
    HW,
    W,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    os_n,
    os_c,
    os_h,
    os_w,
    RELU: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """The gradient for BN's input: ``(g - mean(g) - xhat * mean(g * xhat)) * invstd * weight``."""
    pid_p, pid_c = tl.program_id(0), tl.program_id(1)
    g_offsets, mask, c = _tile_offsets(pid_p, pid_c, P, C, HW, W, gs_n, gs_c, gs_h, gs_w, BLOCK_P, BLOCK_C)
    y_offsets, _, _ = _tile_offsets(pid_p, pid_c, P, C, HW, W, ys_n, ys_c, ys_h, ys_w, BLOCK_P, BLOCK_C)
    out_offsets, _, _ = _tile_offsets(pid_p, pid_c, P, C, HW, W, os_n, os_c, os_h, os_w, BLOCK_P, BLOCK_C)
    cmask = c < C
    mean, invstd, weight, bias = bn_vectors(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, c, cmask, ACC)
    mean_g = channel_vector(sum_g_ptr, c, cmask, ACC) / P
    mean_gx = channel_vector(sum_gx_ptr, c, cmask, ACC) / P
    g = tl.load(g_ptr + g_offsets, mask=mask, other=0.0).to(ACC)
    y = tl.load(y_ptr + y_offsets, mask=mask, other=0.0).to(ACC)
    g = _masked_grad(g, y, mean, invstd, weight, bias, RELU, OUT_DTYPE)
    xhat = (y - mean[None, :]) * invstd[None, :]
    grad = (g - mean_g[None, :] - xhat * mean_gx[None, :]) * (invstd * weight)[None, :]
    tl.store(out_ptr + out_offsets, grad.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------- launchers

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float64: tl.float64,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)


def acc_dtype(t: torch.Tensor) -> tl.constexpr:
    """The dtype kernels compute in for ``t``: float64 for float64 maps, float32 for everything else."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def tl_dtype(dtype: torch.dtype) -> tl.constexpr:
    """Triton's name for a floating-point torch dtype."""
    return _TL_DTYPES[dtype]


def launches(*tensors: torch.Tensor) -> bool:
    """False when a kernel must not run: fake or meta tensors (shape propagation under ``torch.compile``)."""
    for t in tensors:
        # Plain tensors and parameters first: this runs before every launch of an eager step.
        if type(t) not in _PLAIN_TENSORS and is_fake(t) or t.is_meta:
            return False
    return True


def tile_shape(channels: int) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_C)`` for a map of ``channels``: all channels of a pixel in one tile up to 64 (contiguous
    in channels_last), then pixels to fill :data:`TILE_ELEMENTS`."""
    block_c = min(triton.next_power_of_2(channels), MAX_BLOCK_C)
    return TILE_ELEMENTS // block_c, block_c


def _geometry(t: torch.Tensor) -> tuple[int, int, int, int]:
    n, c, h, w = t.shape
    return n * h * w, c, h * w, w


def batch_stats(
    y: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    eps: float,
    stats_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and inverse std of each channel of ``y`` (N, C, H, W; any strides), in ``stats_dtype``.

    With running buffers given, they are updated in place as ``nn.BatchNorm2d`` does in training."""
    P, C, HW, W = _geometry(y)
    mean = y.new_empty((C,), dtype=stats_dtype)
    invstd = y.new_empty((C,), dtype=stats_dtype)
    if not launches(y):  # fake tensors (torch.compile): the outputs' shapes are all it needs
        return mean, invstd
    block_p, block_c = tile_shape(C)
    tiles = triton.cdiv(P, block_p)
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    mean_part = y.new_empty((tiles, C), dtype=acc)
    m2_part = y.new_empty((tiles, C), dtype=acc)
    _stats_partial_kernel[(tiles, triton.cdiv(C, block_c))](
        y, mean_part, m2_part, P, C, HW, W, *y.stride(), BLOCK_P=block_p, BLOCK_C=block_c, ACC=acc_dtype(y)
    )
    update = running_mean is not None and running_var is not None
    finalize_c = min(triton.next_power_of_2(C), 32)
    _stats_finalize_kernel[(triton.cdiv(C, finalize_c),)](
        mean_part,
        m2_part,
        mean,
        invstd,
        running_mean if update else mean,
        running_var if update else invstd,
        tiles,
        P,
        C,
        float(momentum),
        float(eps),
        TILE_P=block_p,
        UPDATE=update,
        BLOCK_T=128,
        BLOCK_C=finalize_c,
        ACC=acc_dtype(y),
    )
    return mean, invstd


def bn_apply(
    y: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    out: torch.Tensor,
    relu: bool,
) -> torch.Tensor:
    """``out[...] = relu(bn(y))`` (or ``bn(y)``) for the given batch statistics; ``out`` has ``y``'s shape and may
    be a strided view (a channel slice of a concatenation). Returns ``out``."""
    if not launches(y, out):
        return out
    P, C, HW, W = _geometry(y)
    block_p, block_c = tile_shape(C)
    _apply_kernel[(triton.cdiv(P, block_p), triton.cdiv(C, block_c))](
        y,
        out,
        mean,
        invstd,
        weight,
        bias,
        P,
        C,
        HW,
        W,
        *y.stride(),
        *out.stride(),
        RELU=relu,
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        ACC=acc_dtype(y),
    )
    return out


def bn_backward(
    grad: torch.Tensor,
    y: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    relu: bool,
    out: torch.Tensor,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of ``relu(bn(y))`` (or ``bn(y)``) in training mode: the input gradient is written into ``out``
    (``y``'s shape; may be a slice of a wider map, or ``grad`` itself); returns the weight and bias gradients.

    ``grad`` (``y``'s shape, any strides) is the gradient at the ReLU's output; ``out_dtype`` is the dtype forward
    rounded BN's output to (the ReLU mask is taken from that rounded value, as autograd's is)."""
    P, C, HW, W = _geometry(y)
    if not launches(grad, y, out):
        return y.new_empty((C,), dtype=weight.dtype), y.new_empty((C,), dtype=bias.dtype)
    block_p, block_c = tile_shape(C)
    tiles = triton.cdiv(P, block_p)
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    sums = y.new_empty((2, tiles, C), dtype=acc)
    grid = (tiles, triton.cdiv(C, block_c))
    common = dict(RELU=relu, OUT_DTYPE=tl_dtype(out_dtype), BLOCK_P=block_p, BLOCK_C=block_c, ACC=acc_dtype(y))
    _backward_reduce_kernel[grid](
        grad, y, mean, invstd, weight, bias, sums[0], sums[1], P, C, HW, W, *grad.stride(), *y.stride(), **common
    )
    # torch.sum reduces the tiles' rows in a fixed order: deterministic, unlike atomics.
    total = sums.sum(dim=1)
    _backward_apply_kernel[grid](
        grad,
        y,
        out,
        mean,
        invstd,
        weight,
        bias,
        total[0],
        total[1],
        P,
        C,
        HW,
        W,
        *grad.stride(),
        *y.stride(),
        *out.stride(),
        **common,
    )
    # Copies: views of one tensor would alias each other as a custom op's outputs.
    return total[1].to(weight.dtype, copy=True), total[0].to(bias.dtype, copy=True)
