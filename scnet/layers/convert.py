"""``convert_to_sc``: a network's eligible 3x3 convolutions replaced, in place, by :class:`SelfCalibratedConv2d`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .conv2d import NormLayer, SelfCalibratedConv2d
from .functional import check_calibration_options
from .scconv import SelfCalibrated

# Layers that already are self-calibrated: their inner 3x3 convolutions are part of the operator.


@dataclass(frozen=True)
class ConvertedConv:
    """A convolution that was replaced: its module name (the first, if it is registered under several) and shape."""

    name: str
    in_chs: int
    out_chs: int
    stride: int


@dataclass(frozen=True)
class SkippedConv:
    """A convolution left as it was, and why."""

    name: str
    reason: str
    kernel_size: tuple[int, int]


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_to_sc` did: every ``nn.Conv2d`` (and subclass) of the model is in exactly one list."""

    converted: tuple[ConvertedConv, ...]
    skipped: tuple[SkippedConv, ...]

    def summary(self, limit: int = 3) -> str:
        """One line: how many 3x3 convolutions were replaced, and which 3x3 ones were kept and why (the first
        ``limit``)."""
        kept = [s for s in self.skipped if s.kernel_size == (3, 3)]
        total = len(self.converted) + len(kept)
        line = f"{len(self.converted)} of {total} 3x3 convolutions replaced by SelfCalibratedConv2d"
        if kept:
            shown = ", ".join(f"{s.name} ({s.reason})" for s in kept[:limit])
            line += f"; kept: {shown}" + (f" and {len(kept) - limit} more" if len(kept) > limit else "")
        return line


def ineligibility(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot become a :class:`SelfCalibratedConv2d` with the same shapes, or None if it can.

    Eligible: a plain ``nn.Conv2d`` (not a subclass, whose own forward would be lost: weight-standardised,
    same-padding or lazy convolutions), 3x3 kernel, ``groups=1``, ``dilation=1``, ``padding=1`` with zeros,
    the same stride on both axes, and even input and output channel counts.
    """
    if not isinstance(conv, nn.Conv2d):
        return f"a {type(conv).__name__}, not a convolution"
    if tuple(conv.kernel_size) != (3, 3):
        return f"kernel {conv.kernel_size[0]}x{conv.kernel_size[1]}, not 3x3"
    if type(conv) is not nn.Conv2d:
        return f"a {type(conv).__name__}, not a plain nn.Conv2d (its own forward would be lost)"
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {tuple(conv.dilation)}"
    if conv.padding != (1, 1) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r} ({conv.padding_mode}), not 1 with zeros"
    if conv.stride[0] != conv.stride[1]:
        return f"stride {tuple(conv.stride)} differs between the axes"
    for key, chs in (("in_chs", conv.in_channels), ("out_chs", conv.out_channels)):
        if chs % 2:
            return f"{key} {chs} is odd"
    return None


def _convolutions(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d, bool]]:
    """``(name, conv, inside an SC layer)`` for every registration of every convolution, in module order."""
    sc_prefixes: list[str] = []
    for name, module in model.named_modules(remove_duplicate=False):
        inside = any(name.startswith(prefix) for prefix in sc_prefixes)
        if isinstance(module, SelfCalibrated) and not inside:
            sc_prefixes.append(f"{name}." if name else "")
        if isinstance(module, nn.Conv2d):
            yield name, module, inside


def convert_to_sc(
    model: nn.Module,
    pooling_r: int = 4,
    norm_layer: NormLayer | None = nn.BatchNorm2d,
    pool_type: str = "avg",
    calib_identity: bool = True,
    upsample: str = "nearest",
    pool_ceil_mode: bool = False,
    bias: bool | None = None,
) -> ConversionReport:
    """Replace, in place, every eligible 3x3 convolution of ``model`` (see :func:`ineligibility`) by a freshly
    initialised :class:`SelfCalibratedConv2d` with the same channels and stride; return what was replaced and
    what was kept, and why.

    The new layers get the options given here (see :class:`SelfCalibratedConv2d`), the replaced convolution's
    device, floating dtype, training mode and ``requires_grad``. Convolutions inside layers that already are
    self-calibrated (``SelfCalibratedConv2d``, ``SCConv``, the zoo's ``SCBottleneck``) are kept, so converting
    twice changes nothing. A convolution registered under several names is replaced by one layer under all of
    them. The model's own normalisation after a replaced convolution stays as it was; use ``norm_layer=None``
    for networks without normalisation (e.g. VGG), as the release's authors advise.

    Raises:
        TypeError: ``model`` is not an eager ``nn.Module`` (convert before ``torch.jit.script``).
        ValueError: an SCConv option outside its values, in one line naming it; the model is then unchanged.
    """
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"convert_to_sc needs an eager nn.Module, got a {type(model).__name__}")
    check_calibration_options(pooling_r, pool_type, pool_ceil_mode, calib_identity, upsample)
    if bias is not None and not isinstance(bias, bool):
        raise ValueError(f"bias must be True, False or None, got {bias!r}")
    registrations: dict[int, list[str]] = {}
    convs: dict[int, nn.Conv2d] = {}
    skipped: list[SkippedConv] = []
    for name, conv, inside in _convolutions(model):
        if id(conv) in registrations:
            registrations[id(conv)].append(name)
            continue
        reason = "inside a self-calibrated layer" if inside else ineligibility(conv)
        if reason is None and not name:
            reason = "the model itself (nothing to replace it in)"
        if reason is not None:
            skipped.append(SkippedConv(name, reason, tuple(conv.kernel_size)))
            continue
        registrations[id(conv)] = [name]
        convs[id(conv)] = conv
    converted: list[ConvertedConv] = []
    for key, conv in convs.items():
        names = registrations[key]
        weight = conv.weight
        # Built where the conv lives: no copy through the CPU, and nothing allocated for a meta-device model.
        with torch.device(weight.device):
            layer = SelfCalibratedConv2d(
                conv.in_channels,
                conv.out_channels,
                conv.stride[0],
                pooling_r=pooling_r,
                norm_layer=norm_layer,
                pool_type=pool_type,
                calib_identity=calib_identity,
                upsample=upsample,
                pool_ceil_mode=pool_ceil_mode,
                bias=bias,
            )
        if weight.is_floating_point():
            layer.to(dtype=weight.dtype)
        layer.train(conv.training).requires_grad_(weight.requires_grad)
        for name in names:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
        converted.append(ConvertedConv(names[0], conv.in_channels, conv.out_channels, conv.stride[0]))
    return ConversionReport(tuple(converted), tuple(skipped))


def default_norm_layer(model: nn.Module) -> NormLayer | None:
    """``nn.BatchNorm2d`` for a network that has batch normalisation, None for one that has none (VGG-like
    networks, where the release's authors advise SC layers without normalisation)."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return nn.BatchNorm2d if has_bn else None
