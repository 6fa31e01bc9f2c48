"""The SCNet bottleneck: a ResNet bottleneck whose 3x3 is split into a plain and a self-calibrated half."""

from __future__ import annotations

import torch
from timm.layers import DropPath, create_attn
from torch import nn

from .fused import batch_norm_group, conv_shared_input, is_plain_bn
from .scconv import SCConv, conv_bn


class SCBottleneck(nn.Module):
    """1x1 reduce -> {plain 3x3 | SCConv} -> concat -> 1x1 expand (+ SE) -> residual add.

    Tensor names follow the original release (``conv1_a``, ``bn1_a``, ``k1``, ``scconv``, ...), so
    its checkpoints load unmodified. ``width`` is the width a plain bottleneck would have; each
    branch gets half of it, which keeps params and MACs at or below the plain block's.
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        cardinality: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        avd: bool = False,
        attn_layer: str | None = None,
        drop_path_rate: float = 0.0,
        pooling_r: int = 4,
        min_input_size: int = 0,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        half = width // 2
        out_chs = planes * self.expansion
        self.conv1_a = nn.Conv2d(in_chs, half, 1, bias=False)
        self.bn1_a = nn.BatchNorm2d(half)
        self.conv1_b = nn.Conv2d(in_chs, half, 1, bias=False)
        self.bn1_b = nn.BatchNorm2d(half)
        # v1d ("avd"): the 3x3s keep full resolution and a 3x3 average pool does the striding.
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if avd else None
        conv_stride = 1 if avd else stride
        self.k1 = conv_bn(half, half, conv_stride, dilation, cardinality)
        self.scconv = SCConv(half, conv_stride, dilation, cardinality, pooling_r, min_input_size)
        self.conv3 = nn.Conv2d(2 * half, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.se = create_attn(attn_layer, out_chs) if attn_layer else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        # Run the two 1x1 reductions as one kernel (same numbers, same state_dict); see fused.py.
        self.fused = True

    def zero_init_last(self) -> None:
        """Zero the last BN's gamma so the block starts as an identity (Goyal et al., 2017)."""
        nn.init.zeros_(self.bn3.weight)

    def _fusable(self, x: torch.Tensor) -> bool:
        # In channels_last, splitting the fused output by channel is a strided gather that costs
        # more than the fusion saves (measured: BENCHMARKS.md), so fuse only NCHW inputs.
        return (
            self.fused
            and not x.is_contiguous(memory_format=torch.channels_last)
            and is_plain_bn(self.bn1_a)
            and is_plain_bn(self.bn1_b)
        )

    def _branches(self, x: torch.Tensor) -> torch.Tensor:
        """Both branches, concatenated: what the paper draws, one layer per line."""
        a = self.relu(self.bn1_a(self.conv1_a(x)))
        b = self.relu(self.bn1_b(self.conv1_b(x)))
        a = self.relu(self.k1(a))
        b = self.relu(self.scconv(b))
        return torch.cat([a, b], dim=1)

    def _branches_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`_branches`, with the two 1x1 reductions (same input) as one conv + BN."""
        half = self.bn1_a.num_features
        ab = self.relu(batch_norm_group(conv_shared_input(x, [self.conv1_a, self.conv1_b]), [self.bn1_a, self.bn1_b]))
        # split (not slicing) so that backward concatenates the grads instead of zero-filling.
        a, b = ab.split(half, dim=1)
        # relu(cat(a, b)) == cat(relu(a), relu(b)), in place on a fresh tensor.
        return self.relu(torch.cat([self.k1(a), self.scconv(b)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)

        out = self._branches_fused(x) if self._fusable(x) else self._branches(x)
        if self.avd_layer is not None:
            out = self.avd_layer(out)
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        out = self.drop_path(out)
        out += shortcut
        return self.relu(out)
