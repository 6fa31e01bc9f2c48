"""The SCNet network: a ResNet-style stem, four stages of SC bottlenecks and a linear head."""

# No `from __future__ import annotations`: FX copies forward()'s annotations into the code it generates,
# and TorchScript must be able to read them there (a traced SC model can be scripted).
from collections.abc import Callable, Sequence

import torch
import torch.fx
from timm.layers import create_classifier, get_norm_layer
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import nn

from ..layers.functional import InputTooSmallError, check_calibration_options, min_feature_size
from ..layers.scconv import SCConv
from .bottleneck import SCBottleneck

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")

STAGE_PLANES = (64, 128, 256, 512)


def check_input_size(x: torch.Tensor, min_input_size: int, pooling_r: int) -> torch.Tensor:
    """Return ``x`` unchanged, or raise :class:`InputTooSmallError` naming the minimum size.

    A plain function wrapped for FX, so tracing keeps it as one node (and, since it returns ``x``, the
    traced graph still checks its input) instead of failing on a comparison of traced sizes.
    """
    h, w = x.shape[-2], x.shape[-1]
    if h < min_input_size or w < min_input_size:
        raise InputTooSmallError(
            f"input {h}x{w} is too small: this SCNet needs at least {min_input_size}x{min_input_size} px "
            f"(its r={pooling_r} pooling would find no window in the last stage's map)"
        )
    return x


torch.fx.wrap("check_input_size")


def _stem(deep_stem: bool, stem_width: int, norm_layer: Callable[[int], nn.Module]) -> nn.Module:
    """7x7/2 conv (v1), or three 3x3 convs (v1d) whose last BN is the network's ``bn1``."""
    if not deep_stem:
        return nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    return nn.Sequential(
        nn.Conv2d(3, stem_width, 3, stride=2, padding=1, bias=False),
        norm_layer(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width, 3, padding=1, bias=False),
        norm_layer(stem_width),
        nn.ReLU(inplace=True),
        nn.Conv2d(stem_width, stem_width * 2, 3, padding=1, bias=False),
    )


def _downsample(
    in_chs: int, out_chs: int, stride: int, avg_down: bool, norm_layer: Callable[[int], nn.Module]
) -> nn.Sequential:
    """Shortcut projection: strided 1x1 (v1), or average pool then 1x1 (v1d, ``downsample.1``)."""
    if not avg_down:
        return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), norm_layer(out_chs))
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
    return nn.Sequential(pool, nn.Conv2d(in_chs, out_chs, 1, bias=False), norm_layer(out_chs))


class SCNet(nn.Module):
    """SCNet (Liu et al., "Improving Convolutional Networks with Self-Calibrated Convolutions", CVPR 2020).

    One class covers the family through a few arguments: ``deep_stem``/``avg_down``/``avd`` give
    the v1d variants, ``cardinality``/``base_width`` SC-ResNeXt, ``attn_layer="se"`` SE-SCNet.
    Module names and order match the original release's checkpoints.

    Args:
        layers: number of blocks in each of the four stages.
        num_classes: classifier outputs; 0 for a feature extractor with no head.
        cardinality: groups of every 3x3 conv (ResNeXt's C).
        base_width: ResNeXt's bottleneck width d; a block's total 3x3 width is
            ``planes * base_width / 64 * cardinality``, split evenly between the two branches.
        deep_stem: three 3x3 convs instead of the 7x7 stem.
        stem_width: width of the deep stem's first two convs.
        avg_down: average-pool shortcut downsampling.
        avd: stride the block with a 3x3 average pool after the 3x3 convs (not in stage 1).
        attn_layer: attention after the last BN of each block, e.g. ``"se"``.
        output_stride: 32, 16 or 8; the last stages trade stride for dilation.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linearly increasing to this rate over the blocks.
        zero_init_last: zero each block's last BN gamma at init.
        global_pool: pooling type of the head (timm's ``SelectAdaptivePool2d``).
        pooling_r: SCConv's down-sampling factor ``r`` (the release: 4).
        pool_type: SCConv's down-sampling pool, ``"avg"`` (the release) or ``"max"``.
        pool_ceil_mode: ceil instead of floor in that pool (the release floors): a map that is not a
            multiple of ``r`` ends in a partial window over the pixels it covers (an average divides by
            their number), and a map smaller than ``r`` is one such window. Needed for ``r=8`` at 224 px,
            where flooring leaves nothing of the last stage's 7x7 map.
        calib_identity: the gate is ``sigmoid(x + up(k2(pool(x))))`` (True, the release) or
            ``sigmoid(up(k2(pool(x))))`` (False).
        upsample: up-sampling of ``k2``'s output, ``"nearest"`` (the release's code) or ``"bilinear"``
            (the paper's text; ``align_corners=False``, PyTorch's default).
        norm_layer: every normalisation layer of the network, called with its channel count: a class such as
            ``nn.BatchNorm2d`` (the default) or torchvision's ``FrozenBatchNorm2d`` (detection), or a name timm
            knows (``"frozenbatchnorm2d"``). The state_dict's names stay the release's (a frozen BN has no
            ``num_batches_tracked``: :func:`~scnet.models.load_weights` drops the file's counters). Blocks whose
            norms are not training-mode stock BatchNorm2d run the plain layers, not the fused kernels.

    None of the SCConv options changes the parameters or the state_dict. They change the smallest input
    the network accepts, :attr:`min_input_size`: ``(r - 1) * output_stride + 1`` px when the pool floors
    (97 for the release), 1 px when it ceils.

    Raises:
        ValueError: an invalid option, e.g. ``pool_type="min"`` or ``pooling_r=0``.
    """

    def __init__(
        self,
        layers: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        cardinality: int = 1,
        base_width: int = 64,
        deep_stem: bool = False,
        stem_width: int = 32,
        avg_down: bool = False,
        avd: bool = False,
        attn_layer: str | None = None,
        output_stride: int = 32,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = False,
        global_pool: str = "avg",
        pooling_r: int = 4,
        pool_type: str = "avg",
        pool_ceil_mode: bool = False,
        calib_identity: bool = True,
        upsample: str = "nearest",
        norm_layer: str | Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        check_calibration_options(pooling_r, pool_type, pool_ceil_mode, calib_identity, upsample)
        norm_layer = get_norm_layer(norm_layer)  # a class, or a timm name such as "frozenbatchnorm2d"
        if in_chans != 3:
            raise ValueError(f"SCNet takes 3-channel images, got in_chans={in_chans}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        # Every stride is a ceil-halving, so the last map is ceil(size / output_stride), and SCConv's pool needs
        # m = r px there (floor) or 1 px (ceil): ceil(size / output_stride) >= m <=> size >= (m - 1) * stride + 1.
        self.min_input_size = (min_feature_size(pooling_r, pool_ceil_mode) - 1) * output_stride + 1
        self.pooling_r = pooling_r

        stem_chs = stem_width * 2 if deep_stem else 64
        self.conv1 = _stem(deep_stem, stem_width, norm_layer)
        self.bn1 = norm_layer(stem_chs)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info = [dict(num_chs=stem_chs, reduction=2, module="relu")]

        total_blocks = sum(layers)
        block_idx = 0
        in_chs, net_stride, dilation = stem_chs, 4, 1
        for stage_idx, (planes, depth) in enumerate(zip(STAGE_PLANES, layers, strict=True)):
            stride = 1 if stage_idx == 0 else 2
            first_dilation = dilation
            if net_stride >= output_stride:
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            out_chs = planes * SCBottleneck.expansion
            blocks = []
            for i in range(depth):
                first = i == 0
                blocks.append(
                    SCBottleneck(
                        in_chs,
                        planes,
                        stride=stride if first else 1,
                        downsample=(
                            _downsample(in_chs, out_chs, stride, avg_down, norm_layer)
                            if first and (stride != 1 or in_chs != out_chs)
                            else None
                        ),
                        cardinality=cardinality,
                        base_width=base_width,
                        dilation=first_dilation if first else dilation,
                        # As released: the first block of stages 2-4 pools, even when dilation
                        # has made its stride 1.
                        avd=avd and first and stage_idx > 0,
                        attn_layer=attn_layer,
                        drop_path_rate=drop_path_rate * block_idx / max(total_blocks - 1, 1),
                        pooling_r=pooling_r,
                        min_input_size=self.min_input_size,
                        pool_type=pool_type,
                        pool_ceil_mode=pool_ceil_mode,
                        calib_identity=calib_identity,
                        upsample=upsample,
                        norm_layer=norm_layer,
                    )
                )
                in_chs = out_chs
                block_idx += 1
            name = f"layer{stage_idx + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=net_stride, module=name))

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(in_chs, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last)

    def init_weights(self, zero_init_last: bool = False) -> None:
        """He (fan-out) init for convs, unit BN, as in the original release."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, SCBottleneck):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm convention)."""
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory."""
        self.grad_checkpointing = enable

    def set_fused(self, enable: bool = True, triton: bool = True) -> None:
        """Run each block's shipped training kernels, or the plain layers as drawn in the paper (``enable=False``).

        The shipped kernels are, in training: on CUDA (with ``triton``) the fused Triton kernels of
        ``layers/triton_ops.py``; elsewhere, or with ``triton=False``, the lean kernels of ``layers/lean.py`` and the
        two 1x1 reductions as one convolution on NCHW input. All compute the same function with the same
        parameters; evaluation runs the plain layers either way."""
        for m in self.modules():
            if isinstance(m, (SCBottleneck, SCConv)):
                m.fused = enable
                m.triton = triton

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """The final linear layer."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """Replace the head, e.g. for fine-tuning on another label set."""
        self.num_classes = num_classes
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def check_input_size(self, x: torch.Tensor) -> None:
        """Fail with a clear message when ``x`` is below :attr:`min_input_size` (SCConv's pooling in the last stage)."""
        check_input_size(x, self.min_input_size, self.pooling_r)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and the four stages; returns the last feature map (N, num_features, H/32, W/32)."""
        x = check_input_size(x, self.min_input_size, self.pooling_r)
        x = self.maxpool(self._stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        # One line per stage (not a loop over a list): TorchScript cannot call a list of different modules.
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return x

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The feature maps at ``indices`` (timm's API: 0 = stem, 1-4 = stages; an int n = the last n).

        Args:
            x: images (N, 3, H, W).
            indices: which of the 5 feature maps (``feature_info``) to return; None = all.
            norm: accepted for timm's API; SCNet has no final norm, so features are returned as they are.
            stop_early: do not run the stages after the last requested one.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of feature maps.

        Returns:
            ``(final features, [feature maps])``, or just the list with ``intermediates_only``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.feature_info), indices)
        x = check_input_size(x, self.min_input_size, self.pooling_r)
        x = self._stem(x)
        intermediates = [x] if 0 in take else []
        x = self.maxpool(x)
        for i, name in enumerate(STAGE_NAMES[:last] if stop_early else STAGE_NAMES, start=1):
            stage = getattr(self, name)
            x = checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)
            if i in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (and head) that the feature maps at ``indices`` do not need; returns the indices kept.

        Pruned stages become empty ``nn.Sequential`` modules; ``feature_info`` is left as it is. When the
        last stage goes, ``num_features`` becomes the last kept map's width and the head is removed.
        ``prune_norm`` is accepted for timm's API (there is no final norm).
        """
        take, last = feature_take_indices(len(self.feature_info), indices)
        for name in STAGE_NAMES[last:]:
            setattr(self, name, nn.Sequential())
        if last == 0:
            self.maxpool = nn.Identity()
        if last < len(STAGE_NAMES):
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or last < len(STAGE_NAMES):
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool, optional dropout and the classifier."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images (N, 3, H, W)."""
        return self.forward_head(self.forward_features(x))
