"""An independent, functional re-implementation of the original SCNet release's forward pass.

Written from the architecture facts in ``tests/reference/published_results.md``: it runs on a bare
state_dict (tensor names of the published checkpoints) with ``torch.nn.functional`` only, and imports
nothing from ``scnet``, so a wiring mistake in scnet's modules cannot be mirrored here.

Covers SCNet (v1: 7x7 stem, strided 1x1 shortcut) and SCNet-v1d (3x3 deep stem, average-pool shortcut,
average pool after the block's 3x3s), in eval or train mode, with optional dilation (``output_stride``)
for v1. Grouped 3x3s (SC-ResNeXt) work too: groups are read off the weight shapes. SCConv's calibration
follows the release unless ``calib`` gives other ablation options (keys and values as in :data:`RELEASE_CALIB`).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch's default; only matters for the running stats updated in train mode
POOLING_R = 4  # SCConv's down-sampling ratio r
# SCConv's calibration in the release, as ablation options (the names scnet.create_model takes).
RELEASE_CALIB = dict(
    pooling_r=POOLING_R, pool_type="avg", pool_ceil_mode=False, calib_identity=True, upsample="nearest"
)


def _conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Bias-free conv with 'same' padding for odd kernels; groups follow from the weight's input channels."""
    pad = dilation * (weight.shape[-1] // 2)
    groups = x.shape[1] // weight.shape[1]
    return F.conv2d(x, weight, stride=stride, padding=pad, dilation=dilation, groups=groups)


def _bn(sd: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, training: bool) -> torch.Tensor:
    # In train mode F.batch_norm normalises with batch statistics and updates sd's running buffers in place.
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=training,
        momentum=BN_MOMENTUM,
        eps=BN_EPS,
    )


def _conv_bn(sd, prefix, x, training, stride=1, dilation=1):
    """``prefix.0`` is the 3x3 conv, ``prefix.1`` its BN (the release's ``nn.Sequential``)."""
    return _bn(sd, f"{prefix}.1", _conv(x, sd[f"{prefix}.0.weight"], stride, dilation), training)


def _calib_pool(x: torch.Tensor, calib: dict) -> torch.Tensor:
    r, ceil = calib["pooling_r"], calib["pool_ceil_mode"]
    if calib["pool_type"] == "max":
        return F.max_pool2d(x, r, r, ceil_mode=ceil)
    # No padding: a ceil-mode partial window averages the pixels it covers (test_ablation_options pins this).
    return F.avg_pool2d(x, r, r, ceil_mode=ceil, count_include_pad=False)


def _calib_upsample(y: torch.Tensor, size, mode: str) -> torch.Tensor:
    if mode == "bilinear":
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(y, size=size, mode="nearest")


def scconv(sd, prefix, x, training, stride=1, dilation=1, calib=None):
    """``k4( k3(x) * sigmoid(x + nearest_up(k2(avgpool_4(x)))) )``; the stride is k4's.

    ``calib`` (default :data:`RELEASE_CALIB`) sets r, the pool's type and rounding (the release floors),
    the up-sampling, and whether ``x +`` is inside the sigmoid.
    """
    calib = {**RELEASE_CALIB, **(calib or {})}
    pooled = _calib_pool(x, calib)
    # k2 is Sequential(AvgPool2d, Conv2d, BN): its conv is index 1 and its BN index 2.
    context = _bn(sd, f"{prefix}.k2.2", _conv(pooled, sd[f"{prefix}.k2.1.weight"], 1, dilation), training)
    context = _calib_upsample(context, x.shape[-2:], calib["upsample"])
    gate = torch.sigmoid(x + context if calib["calib_identity"] else context)
    calibrated = _conv_bn(sd, f"{prefix}.k3", x, training, 1, dilation) * gate
    return _conv_bn(sd, f"{prefix}.k4", calibrated, training, stride, dilation)


def _shortcut(sd, prefix, x, training, stride):
    if f"{prefix}.downsample.0.weight" in sd:  # v1: strided 1x1 conv + BN
        return _bn(sd, f"{prefix}.downsample.1", _conv(x, sd[f"{prefix}.downsample.0.weight"], stride), training)
    if f"{prefix}.downsample.1.weight" in sd:  # v1d: avg pool (parameter-free index 0), then 1x1 conv + BN
        if stride > 1:
            x = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)
        return _bn(sd, f"{prefix}.downsample.2", _conv(x, sd[f"{prefix}.downsample.1.weight"]), training)
    return x


def bottleneck(sd, prefix, x, training, stride=1, dilation=1, first_dilation=None, avd=False, calib=None):
    """Two half-width branches (plain 3x3 ``k1`` | SCConv), concatenated, then 1x1 expand and residual add."""
    conv_stride = 1 if avd else stride
    d3 = dilation if first_dilation is None else first_dilation
    a = F.relu(_bn(sd, f"{prefix}.bn1_a", _conv(x, sd[f"{prefix}.conv1_a.weight"]), training))
    b = F.relu(_bn(sd, f"{prefix}.bn1_b", _conv(x, sd[f"{prefix}.conv1_b.weight"]), training))
    a = F.relu(_conv_bn(sd, f"{prefix}.k1", a, training, conv_stride, d3))
    b = F.relu(scconv(sd, f"{prefix}.scconv", b, training, conv_stride, d3, calib))
    if avd:  # v1d: the 3x3 average pool does the block's striding, on both branches
        a = F.avg_pool2d(a, 3, stride, padding=1)
        b = F.avg_pool2d(b, 3, stride, padding=1)
    out = _bn(sd, f"{prefix}.bn3", _conv(torch.cat([a, b], dim=1), sd[f"{prefix}.conv3.weight"]), training)
    return F.relu(out + _shortcut(sd, prefix, x, training, stride))


def _stem(sd, x, training):
    if "conv1.weight" in sd:  # v1: one 7x7/2 conv
        x = _conv(x, sd["conv1.weight"], stride=2)
    else:  # v1d: 3x3/2, 3x3, 3x3 (Sequential indices 0, 3, 6; BNs at 1 and 4; the last BN is bn1)
        x = F.relu(_bn(sd, "conv1.1", _conv(x, sd["conv1.0.weight"], stride=2), training))
        x = F.relu(_bn(sd, "conv1.4", _conv(x, sd["conv1.3.weight"]), training))
        x = _conv(x, sd["conv1.6.weight"])
    x = F.relu(_bn(sd, "bn1", x, training))
    return F.max_pool2d(x, 3, 2, 1)


def _depths(sd) -> list[int]:
    """Blocks per stage, read off the tensor names ``layer{i}.{j}.*``."""
    depths = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        depths.append(len(idx))
    return depths


def forward_features(
    sd: dict[str, torch.Tensor],
    x: torch.Tensor,
    training: bool = False,
    output_stride: int = 32,
    calib: dict | None = None,
):
    """Stem and four stages. ``output_stride`` < 32 trades the last strides for dilation (torchvision's rule)."""
    v1d = "conv1.0.weight" in sd
    if v1d and output_stride != 32:
        raise NotImplementedError("the release had no dilated v1d; not modelled here")
    x = _stem(sd, x, training)
    net_stride, dilation = 4, 1
    for stage, depth in enumerate(_depths(sd), start=1):
        stride = 1 if stage == 1 else 2
        first_dilation = dilation
        if net_stride >= output_stride:
            dilation, stride = dilation * stride, 1
        else:
            net_stride *= stride
        for i in range(depth):
            first = i == 0
            x = bottleneck(
                sd,
                f"layer{stage}.{i}",
                x,
                training,
                stride=stride if first else 1,
                dilation=dilation,
                first_dilation=first_dilation if first else None,
                avd=v1d and first and stage > 1,
                calib=calib,
            )
    return x


def forward(
    sd: dict[str, torch.Tensor],
    x: torch.Tensor,
    training: bool = False,
    output_stride: int = 32,
    calib: dict | None = None,
):
    """Logits: features, global average pool, linear classifier."""
    feats = forward_features(sd, x, training, output_stride, calib)
    return F.linear(feats.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])
