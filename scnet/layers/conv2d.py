"""``SelfCalibratedConv2d``: the paper's whole self-calibrated convolution as a drop-in for a 3x3 ``nn.Conv2d``."""

# No `from __future__ import annotations`: FX copies forward()'s annotations into the code it generates,
# and TorchScript must be able to read them there (a traced model can be scripted).
from collections.abc import Callable

import torch
from torch import nn

from .scconv import SCConv, SelfCalibrated

NormLayer = Callable[[int], nn.Module]


def _check_channels(key: str, value: int) -> None:
    # bool is an int subclass: in_chs=True would silently mean one channel.
    if not isinstance(value, int) or isinstance(value, bool) or value < 2 or value % 2:
        raise ValueError(
            f"{key} must be an even integer >= 2 (half goes to K1, half to the self-calibration), got {value!r}"
        )


def conv_norm(in_chs: int, out_chs: int, stride: int, norm_layer: NormLayer | None, bias: bool) -> nn.Sequential:
    """3x3 convolution (padding 1) then ``norm_layer(out_chs)``, or ``nn.Identity`` without one.

    The identity keeps index ``1`` in place: SCConv's forward reads ``k3[1]`` and ``k4[1]`` to decide whether its
    lean training kernels apply (they do only for a stock ``BatchNorm2d``).
    """
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=bias),
        norm_layer(out_chs) if norm_layer is not None else nn.Identity(),
    )


class Calibration(SCConv):
    """SCConv's branch with ``k4`` mapping ``in_chs`` to ``out_chs`` and a free choice of norm and bias.

    Forward, gate, size check and lean kernels are SCConv's own: only the kernels are built here, under the
    same names (``k2.1``, ``k3.0``, ...). ``bias`` goes to ``k4`` only (``k2`` and ``k3`` feed the gate and the
    product, whose scale the following kernels absorb).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        norm_layer: NormLayer | None,
        bias: bool,
        **options,
    ) -> None:
        super().__init__(in_chs, stride, **options)
        pool = self.k2[0]
        self.k2 = nn.Sequential(pool, *conv_norm(in_chs, in_chs, 1, norm_layer, False))
        self.k3 = conv_norm(in_chs, in_chs, 1, norm_layer, False)
        self.k4 = conv_norm(in_chs, out_chs, stride, norm_layer, bias)
        # The lean kernel runs k4's convolution without a bias.
        self.fused = not bias


class SelfCalibratedConv2d(SelfCalibrated):
    """Self-calibrated convolution (Liu et al., CVPR 2020, Fig. 2) in place of ``nn.Conv2d(in_chs, out_chs, 3,
    stride, padding=1)``: same input and output shapes.

    The input's channels split in two halves ``x1, x2`` of ``in_chs / 2``; the output is
    ``cat(K1(x1), K4(K3(x2) * sigmoid(x2 + up(K2(pool_r(x2))))))`` with ``out_chs / 2`` channels from each half.
    All four kernels are 3x3 with padding 1; their shapes (out, in):

    * K1: ``out_chs/2 x in_chs/2``, stride ``stride``;
    * K2 (on the ``r``-times pooled map) and K3: ``in_chs/2 x in_chs/2``, stride 1 (the identity term and the
      product need ``in_chs/2`` channels);
    * K4: ``out_chs/2 x in_chs/2``, stride ``stride``.

    Both channel counts must be even (odd ones are refused: there is no half to give each branch). With
    ``in_chs == out_chs`` the four kernels hold exactly the weights of the 3x3 convolution they replace
    (``4 * (C/2)^2 * 9 = C^2 * 9``); otherwise ``9 * in_chs/2 * (in_chs + out_chs)`` against the conv's
    ``9 * in_chs * out_chs``: fewer when the layer widens (``out_chs > in_chs``), more when it narrows.

    Each kernel is followed by ``norm_layer`` (the release's BatchNorm after K1, K2, K3 and K4). With
    ``norm_layer=None`` there is no normalisation inside (VGG-like networks, as the release's authors advised)
    and, by default, K1 and K4, whose outputs are the layer's output, get a bias: the same bias count as the
    conv's, so parameter counts still match the conv with bias.

    Args:
        in_chs: input channels (even).
        out_chs: output channels (even).
        stride: stride of K1 and K4 (the pool and K2, K3 see the input's resolution).
        pooling_r: down-sampling factor ``r`` of K2's pool; the input map must be at least ``r x r``
            (1 px with ``pool_ceil_mode``).
        norm_layer: called with a channel count; ``None`` for none.
        pool_type: ``"avg"`` or ``"max"``.
        calib_identity: ``sigmoid(x2 + up(...))`` (True, the release's) or ``sigmoid(up(...))``.
        upsample: ``"nearest"`` (the release's code) or ``"bilinear"`` (the paper's text).
        pool_ceil_mode: the pool rounds its output size up instead of down.
        bias: bias on K1 and K4; ``None`` = only when ``norm_layer`` is None.
        min_input_size: network input size below which this layer's pool would be empty, for the error
            message only (0 = unknown).

    Raises:
        ValueError: one line naming the argument: odd or non-positive channel counts, a stride below 1, or an
            SCConv option outside its values.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        pooling_r: int = 4,
        norm_layer: NormLayer | None = nn.BatchNorm2d,
        pool_type: str = "avg",
        calib_identity: bool = True,
        upsample: str = "nearest",
        pool_ceil_mode: bool = False,
        bias: bool | None = None,
        min_input_size: int = 0,
    ) -> None:
        super().__init__()
        _check_channels("in_chs", in_chs)
        _check_channels("out_chs", out_chs)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
        if bias is None:
            bias = norm_layer is None
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.half_in = in_chs // 2
        self.k1 = conv_norm(self.half_in, out_chs // 2, stride, norm_layer, bias)
        self.scconv = Calibration(
            self.half_in,
            out_chs // 2,
            stride,
            norm_layer,
            bias,
            pooling_r=pooling_r,
            min_input_size=min_input_size,
            pool_type=pool_type,
            pool_ceil_mode=pool_ceil_mode,
            calib_identity=calib_identity,
            upsample=upsample,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal convolutions (fan-out, ReLU gain) with zero biases, as torchvision's and timm's ResNets and
        VGGs initialise theirs; norm layers keep their own initialisation."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def extra_repr(self) -> str:
        return f"{self.in_chs}, {self.out_chs}, stride={self.stride}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # split (not slicing) so that backward concatenates the grads instead of zero-filling. Explicit sizes make
        # an input of another channel count an error, as it is for nn.Conv2d; indexing rather than unpacking
        # keeps FX from having to guess the number of parts.
        parts = x.split([self.half_in, self.half_in], dim=1)
        return torch.cat([self.k1(parts[0]), self.scconv(parts[1])], dim=1)
