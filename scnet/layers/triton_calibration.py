"""Triton kernels for SCConv's calibration, ``bn3(y3) * sigmoid(x + up(c))``, forward and backward.

``c`` is the low-resolution context ``k2(pool_r(x))`` (h x w), ``up`` PyTorch's nearest upsampling to x's
H x W, ``bn3`` a training-mode BatchNorm with known batch statistics. One program handles one context pixel
``(n, i, j)`` and a block of channels: the full-resolution pixels that nearest upsampling fills from it (its
*window*), so the context is read once per window and the upsampling's backward, a sum over the window, is
computed in registers and written once, by the one program that owns it (deterministic, no atomics).

The window of row ``i`` is the rows whose source index ``min(floor(dst * (h / H)), h - 1)`` (float32, as
PyTorch computes it) is ``i``: rows 0-4, 5-9, 10-13 for 14 -> 3, not ``dst // 4``. Each program scans a few
candidate rows around ``ceil(i * H / h)`` and keeps those that map to ``i`` (:func:`window_plan` sizes the scan),
so the map is PyTorch's own at every size.

Backward runs two passes over the maps: the first sums, per window, the context's gradient and BN's two
per-channel sums (written per window, then reduced by ``torch.sum`` in a fixed order); the second writes the
gradients for ``y3`` and for ``x``, into which the average pool's backward (the path ``x -> pool_r -> k2 -> c``,
whose gradient needs the first pass's result) is folded: no separate upsampling or pooling backward kernel, no
full-resolution gradient map added to another.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

from .triton_bn import bn_vectors, channel_vector, launches

# Elements a program aims to handle (window pixels x channels).
WINDOW_ELEMENTS = 2048


@triton.jit
def _window(pid, H, W, h, w, scale_h, scale_w, KH: tl.constexpr, KW: tl.constexpr, SLACK: tl.constexpr):
    """The context pixel ``(n, i, j)`` of program ``pid`` and the full-resolution pixels of its window, as
    ``(rows, cols, mask)`` over KH x KW candidates."""
    n = pid // (h * w)
    i = (pid // w) % h
    j = pid % w
    p = tl.arange(0, KH * KW)
    rows = (i * H + h - 1) // h - SLACK + p // KW
    cols = (j * W + w - 1) // w - SLACK + p % KW
    # PyTorch's nearest source index, in float32 as its kernels compute it.
    src_r = tl.minimum(tl.floor(rows.to(tl.float32) * scale_h).to(tl.int32), h - 1)
    src_c = tl.minimum(tl.floor(cols.to(tl.float32) * scale_w).to(tl.int32), w - 1)
    mask = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W) & (src_r == i) & (src_c == j)
    return n, i, j, rows, cols, mask


@triton.jit
def _at(n, rows, cols, c, s_n, s_c, s_h, s_w):
    """Offsets of (window pixels x channels) in a strided map."""
    pixel = n.to(tl.int64) * s_n + rows.to(tl.int64) * s_h + cols.to(tl.int64) * s_w
    return pixel[:, None] + c.to(tl.int64)[None, :] * s_c


@triton.jit
def _context(ctx_ptr, n, i, j, c, cmask, cs_n, cs_c, cs_h, cs_w, ACC: tl.constexpr):
    """The window's context pixel (one value per channel) and its offsets, which the context's gradient shares."""
    offsets = n.to(tl.int64) * cs_n + i.to(tl.int64) * cs_h + j.to(tl.int64) * cs_w + c.to(tl.int64) * cs_c
    return tl.load(ctx_ptr + offsets, mask=cmask, other=0.0).to(ACC), offsets


@triton.jit
def _gate_terms(x, y3, ctx, mean, invstd, weight, bias):
    """``xhat``, ``bn3(y3)`` and the gate ``sigmoid(x + ctx)``, computed as the forward computes them."""
    xhat = (y3 - mean[None, :]) * invstd[None, :]
    scale = invstd * weight
    k3x = y3 * scale[None, :] + (bias - mean * scale)[None, :]
    gate = tl.sigmoid(x + ctx[None, :])
    return xhat, k3x, gate


@triton.jit
def _calibration_forward_kernel(
    x_ptr,
    y3_ptr,
    ctx_ptr,
    out_ptr,
    mean_ptr,
    invstd_ptr,
    weight_ptr,
    bias_ptr,
    C,
    H,
    W,
    h,
    w,
    scale_h,
    scale_w,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    cs_n,
    cs_c,
    cs_h,
    cs_w,
    os_n,
    os_c,
    os_h,
    os_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SLACK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """``out = bn3(y3) * sigmoid(x + up(ctx))`` over one window."""
    n, i, j, rows, cols, pmask = _window(tl.program_id(0), H, W, h, w, scale_h, scale_w, KH, KW, SLACK)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = pmask[:, None] & cmask[None, :]
    ctx, ctx_offsets = _context(ctx_ptr, n, i, j, c, cmask, cs_n, cs_c, cs_h, cs_w, ACC)
    x = tl.load(x_ptr + _at(n, rows, cols, c, xs_n, xs_c, xs_h, xs_w), mask=mask, other=0.0).to(ACC)
    y3 = tl.load(y3_ptr + _at(n, rows, cols, c, ys_n, ys_c, ys_h, ys_w), mask=mask, other=0.0).to(ACC)
    mean, invstd, weight, bias = bn_vectors(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, c, cmask, ACC)
    _, k3x, gate = _gate_terms(x, y3, ctx, mean, invstd, weight, bias)
    out = k3x * gate
    tl.store(out_ptr + _at(n, rows, cols, c, os_n, os_c, os_h, os_w), out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _calibration_sums_kernel(
    g_ptr,
    x_ptr,
    y3_ptr,
    ctx_ptr,
    grad_ctx_ptr,
    sum_g_ptr,
    sum_gx_ptr,
    mean_ptr,
    invstd_ptr,
    weight_ptr,
    bias_ptr,
    C,
    H,
    W,
    h,
    w,
    scale_h,
    scale_w,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    cs_n,
    cs_c,
    cs_h,
    cs_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SLACK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Backward, first pass, over one window (``g``: the gradient at the product): the context's gradient (the
    sigmoid's input gradient summed over the window) and, per channel, the window's sums of the gradient at
    ``bn3``'s output and of its product with ``bn3``'s normalised input."""
    pid = tl.program_id(0)
    n, i, j, rows, cols, pmask = _window(pid, H, W, h, w, scale_h, scale_w, KH, KW, SLACK)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = pmask[:, None] & cmask[None, :]
    ctx, ctx_offsets = _context(ctx_ptr, n, i, j, c, cmask, cs_n, cs_c, cs_h, cs_w, ACC)
    g = tl.load(g_ptr + _at(n, rows, cols, c, gs_n, gs_c, gs_h, gs_w), mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + _at(n, rows, cols, c, xs_n, xs_c, xs_h, xs_w), mask=mask, other=0.0).to(ACC)
    y3 = tl.load(y3_ptr + _at(n, rows, cols, c, ys_n, ys_c, ys_h, ys_w), mask=mask, other=0.0).to(ACC)
    mean, invstd, weight, bias = bn_vectors(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, c, cmask, ACC)
    xhat, k3x, gate = _gate_terms(x, y3, ctx, mean, invstd, weight, bias)
    g_k3x = tl.where(mask, g * gate, 0.0)
    g_z = tl.where(mask, g * k3x * gate * (1.0 - gate), 0.0)
    tl.store(grad_ctx_ptr + ctx_offsets, tl.sum(g_z, axis=0).to(grad_ctx_ptr.dtype.element_ty), mask=cmask)
    row = pid.to(tl.int64) * C + c
    tl.store(sum_g_ptr + row, tl.sum(g_k3x, axis=0), mask=cmask)
    tl.store(sum_gx_ptr + row, tl.sum(g_k3x * xhat, axis=0), mask=cmask)


@triton.jit
def _calibration_grads_kernel(
    g_ptr,
    x_ptr,
    y3_ptr,
    ctx_ptr,
    pool_grad_ptr,
    grad_x_ptr,
    grad_y3_ptr,
    sum_g_ptr,
    sum_gx_ptr,
    mean_ptr,
    invstd_ptr,
    weight_ptr,
    bias_ptr,
    count,
    C,
    H,
    W,
    h,
    w,
    scale_h,
    scale_w,
    R,
    gs_n,
    gs_c,
    gs_h,
    gs_w,
    xs_n,
    xs_c,
    xs_h,
    xs_w,
    ys_n,
    ys_c,
    ys_h,
    ys_w,
    cs_n,
    cs_c,
    cs_h,
    cs_w,
    ps_n,
    ps_c,
    ps_h,
    ps_w,
    gxs_n,
    gxs_c,
    gxs_h,
    gxs_w,
    gys_n,
    gys_c,
    gys_h,
    gys_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    SLACK: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ACC: tl.constexpr,
):
    """Backward, second pass, over one window: ``grad_y3`` (BN's backward with the summed terms) and ``grad_x``,
    the sigmoid's input gradient plus the average pool's backward of ``pool_grad`` (the gradient at the r x r
    pooled map, spread evenly over each pooled window; pixels past the last whole window get none)."""
    n, i, j, rows, cols, pmask = _window(tl.program_id(0), H, W, h, w, scale_h, scale_w, KH, KW, SLACK)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mask = pmask[:, None] & cmask[None, :]
    ctx, ctx_offsets = _context(ctx_ptr, n, i, j, c, cmask, cs_n, cs_c, cs_h, cs_w, ACC)
    g = tl.load(g_ptr + _at(n, rows, cols, c, gs_n, gs_c, gs_h, gs_w), mask=mask, other=0.0).to(ACC)
    x = tl.load(x_ptr + _at(n, rows, cols, c, xs_n, xs_c, xs_h, xs_w), mask=mask, other=0.0).to(ACC)
    y3 = tl.load(y3_ptr + _at(n, rows, cols, c, ys_n, ys_c, ys_h, ys_w), mask=mask, other=0.0).to(ACC)
    mean, invstd, weight, bias = bn_vectors(mean_ptr, invstd_ptr, weight_ptr, bias_ptr, c, cmask, ACC)
    mean_g = channel_vector(sum_g_ptr, c, cmask, ACC) / count
    mean_gx = channel_vector(sum_gx_ptr, c, cmask, ACC) / count
    xhat, k3x, gate = _gate_terms(x, y3, ctx, mean, invstd, weight, bias)
    g_k3x = g * gate
    grad_y3 = (g_k3x - mean_g[None, :] - xhat * mean_gx[None, :]) * (invstd * weight)[None, :]
    grad_y3_offsets = _at(n, rows, cols, c, gys_n, gys_c, gys_h, gys_w)
    tl.store(grad_y3_ptr + grad_y3_offsets, grad_y3.to(grad_y3_ptr.dtype.element_ty), mask=mask)
    grad_x = g * k3x * gate * (1.0 - gate)
    if ALIGNED:
        # The upsampling window is the pooling window (H = r * h): one pooled gradient per channel.
        pool_offsets = n.to(tl.int64) * ps_n + i.to(tl.int64) * ps_h + j.to(tl.int64) * ps_w
        pooled = tl.load(pool_grad_ptr + pool_offsets + c.to(tl.int64) * ps_c, mask=cmask, other=0.0).to(ACC)
        grad_x += pooled[None, :] / (R * R)
    else:
        in_pool = pmask & (rows < R * h) & (cols < R * w)
        pool_offsets = _at(n, rows // R, cols // R, c, ps_n, ps_c, ps_h, ps_w)
        pooled = tl.load(pool_grad_ptr + pool_offsets, mask=in_pool[:, None] & cmask[None, :], other=0.0).to(ACC)
        grad_x += pooled / (R * R)
    grad_x_offsets = _at(n, rows, cols, c, gxs_n, gxs_c, gxs_h, gxs_w)
    tl.store(grad_x_ptr + grad_x_offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------- launchers


@functools.lru_cache(maxsize=256)
def source_rows(out_size: int, in_size: int) -> tuple[int, ...]:
    """PyTorch's nearest source index of each of ``out_size`` rows from ``in_size``: ``min(floor(dst * scale),
    in - 1)`` with ``scale = in / out`` in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    return tuple(int(v) for v in np.minimum(np.floor(dst * scale), in_size - 1))


@functools.lru_cache(maxsize=256)
def window_plan(out_size: int, in_size: int, pooling_r: int) -> tuple[int, int, bool]:
    """``(candidates, slack, aligned)`` along one axis: how many rows a program scans (a power of two), how many
    of them lie before ``ceil(i * out / in)`` (1 where float32 rounding moves a window's start; 0 otherwise), and
    whether every window is exactly the pooling window ``[r * i, r * i + r)``."""
    src = np.asarray(source_rows(out_size, in_size))
    exact = (np.arange(out_size) * in_size) // out_size
    slack = 0 if np.array_equal(src, exact) else 1
    longest = int(np.bincount(src, minlength=in_size).max())
    aligned = out_size == pooling_r * in_size and np.array_equal(src, np.arange(out_size) // pooling_r)
    return triton.next_power_of_2(longest + 2 * slack), slack, bool(aligned)


def _plan(x: torch.Tensor, ctx: torch.Tensor, pooling_r: int) -> dict:
    """The launch of the window kernels for these maps: geometry arguments, constants, grid (see :func:`_plan_of`)."""
    N, C, H, W = (int(s) for s in x.shape)
    return _plan_of(N, C, H, W, int(ctx.shape[-2]), int(ctx.shape[-1]), pooling_r, x.dtype == torch.float64)


@functools.lru_cache(maxsize=256)
def _plan_of(N: int, C: int, H: int, W: int, h: int, w: int, pooling_r: int, float64: bool) -> dict:
    # Cached: each calibration runs four window kernels a step with the same plan. The dict is only read.
    kh, slack_h, aligned_h = window_plan(H, h, pooling_r)
    kw, slack_w, aligned_w = window_plan(W, w, pooling_r)
    block_c = min(triton.next_power_of_2(C), max(16, WINDOW_ELEMENTS // (kh * kw)))
    geometry = (C, H, W, h, w, float(np.float32(h) / np.float32(H)), float(np.float32(w) / np.float32(W)))
    acc = tl.float64 if float64 else tl.float32
    constants = dict(KH=kh, KW=kw, SLACK=max(slack_h, slack_w), BLOCK_C=block_c, ACC=acc)
    return dict(
        geometry=geometry,
        constants=constants,
        grid=(N * h * w, triton.cdiv(C, block_c)),
        aligned=aligned_h and aligned_w,
    )


def calibration_forward(
    x: torch.Tensor,
    y3: torch.Tensor,
    ctx: torch.Tensor,
    bn: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    out: torch.Tensor,
    pooling_r: int,
) -> torch.Tensor:
    """``out[...] = bn(y3) * sigmoid(x + up(ctx))``; ``bn`` is (batch mean, inverse std, weight, bias) of a
    training-mode BN; ``x``, ``y3`` and ``out`` are N x C x H x W maps with any strides, ``ctx`` N x C x h x w."""
    if not launches(x, y3, ctx, out):  # fake tensors (torch.compile): shapes only
        return out
    plan = _plan(x, ctx, pooling_r)
    _calibration_forward_kernel[plan["grid"]](
        x,
        y3,
        ctx,
        out,
        *bn,
        *plan["geometry"],
        *x.stride(),
        *y3.stride(),
        *ctx.stride(),
        *out.stride(),
        **plan["constants"],
    )
    return out


def calibration_sums(
    grad: torch.Tensor,
    x: torch.Tensor,
    y3: torch.Tensor,
    ctx: torch.Tensor,
    bn: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    pooling_r: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward's first pass: the gradient for ``ctx`` (``ctx``'s dtype and strides) and ``bn``'s per-channel sums
    ``(sum(g), sum(g * xhat))`` of the gradient ``g`` at its output (fixed-order sums over the windows)."""
    C = x.shape[1]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    grad_ctx = torch.empty_like(ctx)
    if not launches(grad, x, y3, ctx):
        return grad_ctx, x.new_empty((C,), dtype=acc), x.new_empty((C,), dtype=acc)
    plan = _plan(x, ctx, pooling_r)
    sums = x.new_empty((2, plan["grid"][0], C), dtype=acc)
    _calibration_sums_kernel[plan["grid"]](
        grad,
        x,
        y3,
        ctx,
        grad_ctx,
        sums[0],
        sums[1],
        *bn,
        *plan["geometry"],
        *grad.stride(),
        *x.stride(),
        *y3.stride(),
        *ctx.stride(),
        **plan["constants"],
    )
    # torch.sum over the windows' rows, in a fixed order; copies, so that the two do not alias (custom ops).
    sum_g, sum_gx = sums.sum(dim=1).unbind()
    return grad_ctx, sum_g.clone(), sum_gx.clone()


def calibration_grads(
    grad: torch.Tensor,
    x: torch.Tensor,
    y3: torch.Tensor,
    ctx: torch.Tensor,
    bn: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    bn_sums: tuple[torch.Tensor, torch.Tensor],
    pool_grad: torch.Tensor,
    pooling_r: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward's second pass: the gradients for ``x`` (the calibration's own and the ``r x r`` average pool's,
    whose output gradient is ``pool_grad``, N x C x h x w) and for ``y3``, in their dtypes and layouts."""
    grad_x = torch.empty_like(x)
    grad_y3 = torch.empty_like(y3)
    if not launches(grad, x, y3, ctx, pool_grad):
        return grad_x, grad_y3
    plan = _plan(x, ctx, pooling_r)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    _calibration_grads_kernel[plan["grid"]](
        grad,
        x,
        y3,
        ctx,
        pool_grad,
        grad_x,
        grad_y3,
        *bn_sums,
        *bn,
        count,
        *plan["geometry"],
        pooling_r,
        *grad.stride(),
        *x.stride(),
        *y3.stride(),
        *ctx.stride(),
        *pool_grad.stride(),
        *grad_x.stride(),
        *grad_y3.stride(),
        ALIGNED=plan["aligned"],
        **plan["constants"],
    )
    return grad_x, grad_y3
