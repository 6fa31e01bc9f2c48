"""The SCNet bottleneck: a ResNet bottleneck whose 3x3 is split into a plain and a self-calibrated half."""

# No `from __future__ import annotations`: FX copies forward()'s annotations into the code it generates,
# and TorchScript must be able to read them there (a traced SC model can be scripted).
from collections.abc import Callable
from typing import Final

import torch
import torch.fx
from timm.layers import DropPath, create_attn
from torch import nn

from ..layers.dispatch import training_kernels
from ..layers.fused import batch_norm_group, can_fuse_bns, conv1x1_shared_input, is_plain_bn
from ..layers.lean import bn_relu_cat_conv, shared_input_conv1x1
from ..layers.scconv import SCConv, SelfCalibrated, conv_bn


class SCBottleneck(SelfCalibrated):
    """1x1 reduce -> {plain 3x3 | SCConv} -> concat -> 1x1 expand (+ SE) -> residual add.

    Tensor names follow the original release (``conv1_a``, ``bn1_a``, ``k1``, ``scconv``, ...), so
    its checkpoints load unmodified. ``width`` is the width a plain bottleneck would have; each
    branch gets half of it, which keeps params and MACs at or below the plain block's. ``pooling_r``,
    ``min_input_size``, ``pool_type``, ``pool_ceil_mode``, ``calib_identity`` and ``upsample`` go to the
    :class:`SCConv`; ``norm_layer`` (called with a channel count, ``nn.BatchNorm2d`` by default) builds every norm of
    the block, the SCConv's included. The state_dict's names are the same for any norm layer.
    """

    expansion = 4
    # Whether the two reduction BNs can run as one (stock BatchNorm2d, same settings). TorchScript cannot ask a
    # module its type at run time, so __prepare_scriptable__ decides it when the block is scripted; as a
    # Final constant it also keeps the fused code out of blocks whose BNs it cannot handle (e.g. frozen BN).
    plain_bns: Final[bool]

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
        pool_type: str = "avg",
        pool_ceil_mode: bool = False,
        calib_identity: bool = True,
        upsample: str = "nearest",
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * cardinality
        half = width // 2
        out_chs = planes * self.expansion
        self.conv1_a = nn.Conv2d(in_chs, half, 1, bias=False)
        self.bn1_a = norm_layer(half)
        self.conv1_b = nn.Conv2d(in_chs, half, 1, bias=False)
        self.bn1_b = norm_layer(half)
        # v1d ("avd"): the 3x3s keep full resolution and a 3x3 average pool does the striding.
        self.avd_layer = nn.AvgPool2d(3, stride, padding=1) if avd else None
        conv_stride = 1 if avd else stride
        self.k1 = conv_bn(half, half, conv_stride, dilation, cardinality, norm_layer)
        self.scconv = SCConv(
            half,
            conv_stride,
            dilation,
            cardinality,
            pooling_r=pooling_r,
            min_input_size=min_input_size,
            pool_type=pool_type,
            pool_ceil_mode=pool_ceil_mode,
            calib_identity=calib_identity,
            upsample=upsample,
            norm_layer=norm_layer,
        )
        self.conv3 = nn.Conv2d(2 * half, out_chs, 1, bias=False)
        self.bn3 = norm_layer(out_chs)
        self.se = create_attn(attn_layer, out_chs) if attn_layer else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        # In training, run the two 1x1 reductions as one kernel (same numbers, same state_dict); see fused.py.
        self.fused = True
        # On CUDA, training runs the fused Triton kernels (triton_ops.py) where they apply; False keeps the lean ones.
        self.triton = True
        # Read only by scripted code; set by __prepare_scriptable__ (with the BNs' momentum and eps, which
        # TorchScript cannot read from the BN submodules).
        self.plain_bns = True
        self.bn_momentum = 0.1
        self.bn_eps = 1e-5

    def zero_init_last(self) -> None:
        """Zero the last BN's gamma so the block starts as an identity (Goyal et al., 2017)."""
        nn.init.zeros_(self.bn3.weight)

    def __prepare_scriptable__(self) -> "SCBottleneck":
        # torch.jit.script calls this on every submodule before compiling it.
        self.plain_bns = can_fuse_bns(self.bn1_a, self.bn1_b)
        if self.plain_bns:
            self.bn_momentum, self.bn_eps = float(self.bn1_a.momentum), float(self.bn1_a.eps)
        return self

    def _fusable(self, x: torch.Tensor) -> bool:
        if torch.jit.is_scripting():
            plain = self.plain_bns
        elif isinstance(x, torch.fx.Proxy):
            # FX graphs get the layers one by one, as the paper draws them: every node is a module
            # of the state_dict, which is what feature extraction by node name expects.
            return False
        else:
            plain = can_fuse_bns(self.bn1_a, self.bn1_b)
        # Batch statistics only. With running statistics (evaluation, frozen-statistics fine-tuning) the layers run
        # one by one, as FX graphs have them: with several threads a 1x1 conv with twice the outputs sums in another
        # order, and eval outputs of eager, scripted, traced and exported code must be bit-equal (timm's FX test).
        # Cost on CPU, NCHW eval: up to ~5% for SCNet-50 (its first stages read a wide input twice), none measurable
        # for SC-ResNeXt-50; channels_last never fused.
        training = self.bn1_a.training and self.bn1_b.training
        # In channels_last, splitting the fused output by channel is a strided gather that costs
        # more than the fusion saves (measured: BENCHMARKS.md), so fuse only NCHW inputs.
        return self.fused and plain and training and not x.is_contiguous(memory_format=torch.channels_last)

    def _branches(self, x: torch.Tensor) -> torch.Tensor:
        """Both branches, concatenated: what the paper draws, one layer per line."""
        a = self.relu(self.bn1_a(self.conv1_a(x)))
        b = self.relu(self.bn1_b(self.conv1_b(x)))
        a = self.relu(self.k1(a))
        b = self.relu(self.scconv(b))
        return torch.cat([a, b], dim=1)

    def _reduce_fused(self, x: torch.Tensor) -> torch.Tensor:
        """``cat([bn1_a(conv1_a(x)), bn1_b(conv1_b(x))])`` as one conv and one BN (fusable BNs only)."""
        return self._bn_reduce(conv1x1_shared_input(x, [self.conv1_a.weight, self.conv1_b.weight]))

    def _bn_reduce(self, y: torch.Tensor) -> torch.Tensor:
        """``bn1_a`` and ``bn1_b`` as one training-mode BN over ``y``, the two reductions' outputs laid end to end
        (only where :meth:`_fusable`: both BNs in training mode)."""
        bn_a, bn_b = self.bn1_a, self.bn1_b
        mean_a, mean_b, var_a, var_b = bn_a.running_mean, bn_b.running_mean, bn_a.running_var, bn_b.running_var
        count_a, count_b = bn_a.num_batches_tracked, bn_b.num_batches_tracked
        # Plain BNs always have their buffers (_fusable); the asserts tell TorchScript so.
        assert mean_a is not None and mean_b is not None and var_a is not None and var_b is not None
        assert count_a is not None and count_b is not None
        if torch.jit.is_scripting():
            momentum, eps = self.bn_momentum, self.bn_eps
        else:
            momentum, eps = float(bn_a.momentum), float(bn_a.eps)
        count_a.add_(1)
        count_b.add_(1)
        return batch_norm_group(
            y, [bn_a.weight, bn_b.weight], [bn_a.bias, bn_b.bias], [mean_a, mean_b], [var_a, var_b], True, momentum, eps
        )

    def _branches_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`_branches`, with the two 1x1 reductions (same input) as one conv + BN."""
        ab = self.relu(self._reduce_fused(x))
        # split (not slicing) so that backward concatenates the grads instead of zero-filling.
        a, b = ab.split(self.bn1_a.num_features, dim=1)
        # relu(cat(a, b)) == cat(relu(a), relu(b)), in place on a fresh tensor.
        return self.relu(torch.cat([self.k1(a), self.scconv(b)], dim=1))

    @torch.jit.unused
    def _conv3_lean(self, x: torch.Tensor) -> torch.Tensor:
        """``conv3`` of both branches (before ``bn3``) by the lean kernels: the block keeps the BN inputs of
        ``k1``, ``k3`` and ``k4`` for backward, but not the gate, the product or the concatenation."""
        if self._fusable(x):
            y = shared_input_conv1x1(x, [self.conv1_a.weight, self.conv1_b.weight])
            a, b = self.relu(self._bn_reduce(y)).split(self.bn1_a.num_features, dim=1)
        else:
            a = self.relu(self.bn1_a(self.conv1_a(x)))
            b = self.relu(self.bn1_b(self.conv1_b(x)))
        bn_a, bn_b = self.k1[1], self.scconv.k4[1]
        y_a = self.k1[0](a)
        y_b = self.scconv.calibrated_lean(b)
        for bn in (bn_a, bn_b):  # the kernel updates the running statistics, nn.BatchNorm2d this
            bn.num_batches_tracked.add_(1)
        avd_stride = 0 if self.avd_layer is None else int(self.avd_layer.stride)
        return bn_relu_cat_conv(y_a, y_b, bn_a, bn_b, self.conv3, avd_stride)

    @torch.jit.unused
    def _conv3_triton(self, x: torch.Tensor) -> torch.Tensor:
        """``conv3`` of both branches (before ``bn3``) by the fused Triton kernels (CUDA): the two reductions as one
        convolution split by BN-ReLU, the calibration with ``k2`` inside, BN-ReLU writing the concatenation."""
        from ..layers import triton_ops  # imports triton: only where it runs

        if is_plain_bn(self.bn1_a) and is_plain_bn(self.bn1_b):
            a, b = triton_ops.reduce_split(x, self.conv1_a, self.bn1_a, self.conv1_b, self.bn1_b)
        else:
            a = self.relu(self.bn1_a(self.conv1_a(x)))
            b = self.relu(self.bn1_b(self.conv1_b(x)))
        y_a = self.k1[0](a)
        y_b = self.scconv.calibrated_lean(b, triton=self.scconv.triton)
        avd_stride = 0 if self.avd_layer is None else int(self.avd_layer.stride)
        return triton_ops.bn_relu_cat_conv(y_a, y_b, self.k1[1], self.scconv.k4[1], self.conv3, avd_stride)

    @torch.jit.unused
    def _kernels(self, x: torch.Tensor) -> str:
        fused = self.fused and self.scconv.fused
        return training_kernels(x, fused, self.triton, [self.k1[1], self.scconv.k3[1], self.scconv.k4[1]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)

        # TorchScript never reaches the lean kernels (autograd Functions do not script); plain_bns first: a
        # constant False there keeps TorchScript from compiling the fused code at all.
        kernels = "plain"
        if not torch.jit.is_scripting():
            kernels = self._kernels(x)
        if kernels == "triton":
            out = self._conv3_triton(x)
        elif kernels == "lean":
            out = self._conv3_lean(x)
        else:
            if self.plain_bns and self._fusable(x):
                out = self._branches_fused(x)
            else:
                out = self._branches(x)
            if self.avd_layer is not None:
                out = self.avd_layer(out)
            out = self.conv3(out)
        out = self.bn3(out)
        if self.se is not None:
            out = self.se(out)
        out = self.drop_path(out)
        out += shortcut
        return self.relu(out)
