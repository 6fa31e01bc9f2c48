"""``create_model`` and ``list_models``: one entry point for SC models, their timm baselines, and any timm model
with its 3x3 convolutions made self-calibrated (``convert_sc=True``)."""

from __future__ import annotations

import difflib
import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import timm
import torch
from timm.layers import get_norm_layer
from timm.models import FeatureListNet
from torch import nn

from ..layers import ConversionReport, convert_to_sc, default_norm_layer, smallest_input_size
from ..layers.functional import SC_OPTION_KEYS
from . import zoo
from .weights import CheckpointError, check_compatible, load_weights, read_state_dict

BASELINE_MODELS: tuple[str, ...] = tuple(dict.fromkeys(zoo.BASELINES.values()))


def list_models(include_baselines: bool = True) -> list[str]:
    """Names ``create_model`` accepts: the SC family, then the timm baselines."""
    return list(zoo.SC_MODELS) + (list(BASELINE_MODELS) if include_baselines else [])


def _check_name(name: str, convert_sc: bool) -> None:
    """Raise ``ValueError`` for a name ``create_model`` does not build, with the closest names it does."""
    known = list_models()
    if name in known:
        if convert_sc and name in zoo.SC_MODELS:
            raise ValueError(f"convert_sc=True: {name} already has self-calibrated convolutions")
        return
    if convert_sc and timm.is_model(name):
        return
    if timm.is_model(name):
        raise ValueError(
            f"model {name!r} is a timm model outside the zoo (scnet.list_models()); "
            "convert_sc=True builds any timm model"
        )
    # Typos: the closest zoo names, and with convert_sc the closest timm names too (the zoo's are among them).
    candidates = list(dict.fromkeys(known + (timm.list_models() if convert_sc else [])))
    close = difflib.get_close_matches(name, candidates, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; choose from {', '.join(known)}"
    raise ValueError(f"unknown model {name!r}{hint}")


def _norm_layer_for_timm(norm_layer: Any) -> Callable[..., nn.Module]:
    """``norm_layer`` as timm's ResNets call it: a name (``"frozenbatchnorm2d"``) becomes its class, and a class
    without ``device``/``dtype`` arguments (torchvision's ``FrozenBatchNorm2d``), which timm passes to each norm,
    is wrapped in a function that takes them."""
    norm_layer = get_norm_layer(norm_layer)
    try:
        params = inspect.signature(norm_layer).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: pass it on as it is
        return norm_layer
    if any(p.name == "device" or p.kind is p.VAR_KEYWORD for p in params):
        return norm_layer

    def build(num_features: int, device: Any = None, dtype: Any = None, **kwargs: Any) -> nn.Module:
        norm = norm_layer(num_features, **kwargs)
        return norm.to(device=device, dtype=dtype) if device is not None or dtype is not None else norm

    return build


def _fits(model: nn.Module, path: str | os.PathLike) -> bool:
    """Whether the weights at ``path`` fit ``model`` (its classifier aside: ``load_weights`` handles that)."""
    head = getattr(model, "pretrained_cfg", {}).get("classifier")
    try:
        check_compatible(model, read_state_dict(path), str(path), ignore_prefix=f"{head}." if head else "")
    except CheckpointError:
        return False
    return True


def _convert(model: nn.Module, sc_options: dict[str, Any]) -> ConversionReport:
    """``convert_to_sc`` with the model's own normalisation convention; returns its report."""
    return convert_to_sc(model, norm_layer=default_norm_layer(model), **sc_options)


@functools.lru_cache(maxsize=64)
def _converted_min_input_size(name: str, options: tuple[tuple[str, Any], ...], sc_options: tuple) -> int | None:
    """The smallest input of ``name`` built with ``options`` and converted: a shape-only twin on the meta device
    (about a second of meta forwards, so cached)."""
    with torch.device("meta"):
        twin = timm.create_model(name, pretrained=False, **dict(options))
        _convert(twin, dict(sc_options))
    return smallest_input_size(twin)


def _min_input_size(name: str, options: dict[str, Any], sc_options: dict[str, Any]) -> int | None:
    key = (name, tuple(sorted(options.items())), tuple(sorted(sc_options.items())))
    try:
        hash(key)
    except TypeError:  # an unhashable option (a list): no cache
        return _converted_min_input_size.__wrapped__(*key)
    return _converted_min_input_size(*key)


def create_model(
    name: str,
    num_classes: int = 1000,
    pretrained: bool | str | os.PathLike | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a zoo model, optionally with weights: the original release's (downloaded) or a local file's.

    Args:
        name: one of :func:`list_models`; with ``convert_sc=True`` any timm model instead (not an SC one).
        num_classes: classifier outputs. If it differs from the checkpoint's, the classifier is
            left freshly initialised and everything else is loaded (fine-tuning).
        pretrained: ``True``: the original release's weights for ``name`` (scnet50, scnet50_v1d, scnet101),
            downloaded from the authors' URL on first use into torch.hub's cache (``$TORCH_HOME/hub/checkpoints``),
            checked against the sha256 prefix in the file name (:func:`scnet.models.released_weights`; the
            environment variable ``SCNET_WEIGHTS_URL`` names a mirror folder instead). A path: a local
            weights file, a published ``.pth`` file of the original release, a ``.safetensors`` file, or one of
            this project's checkpoints. ``None`` or ``False``: fresh initialisation.
        **overrides: model options, e.g. ``drop_path_rate=0.1``, ``zero_init_last=True``,
            ``output_stride=16``, ``features_only=True, out_indices=(1, 2, 3, 4)``,
            ``norm_layer=torchvision.ops.FrozenBatchNorm2d`` (every model: the norm of each layer, a class or a
            name timm knows; the state_dict keeps its names). SC models also take
            the options of SCConv's calibration ``sigmoid(x + up(k2(pool_r(x))))``, whose defaults are the
            release's: ``pooling_r=4`` (the factor r), ``pool_type="avg"`` (or ``"max"``),
            ``pool_ceil_mode=False`` (True: the pool rounds up, so a map smaller than r, such as the 7x7
            last map at 224 px with r=8, is one partial window averaged over the pixels it covers),
            ``calib_identity=True`` (False: ``sigmoid(up(...))`` without the ``x +`` term) and
            ``upsample="nearest"`` (or ``"bilinear"``, with ``align_corners=False``). They change the
            function, never the state_dict, so a checkpoint loads into any of them: build with the options
            it was trained with. The model's ``min_input_size`` attribute follows them
            (``(r - 1) * output_stride + 1`` px, or 1 px in ceil mode); ``pretrained_cfg["min_input_size"]``
            stays the registered name's (97 px).

            ``convert_sc=True`` builds ``name`` with timm, then replaces its eligible 3x3 convolutions by
            :class:`scnet.layers.SelfCalibratedConv2d` (:func:`scnet.layers.convert_to_sc`) with the SCConv
            options above, BatchNorm inside when the network has BatchNorm and none otherwise (VGG). The model
            then carries the report as ``sc_conversion`` and its smallest input as ``min_input_size`` (found on
            the meta device). A ``pretrained`` file is loaded before the conversion when it fits the plain
            network (the new layers start fresh), after it when it fits the converted one (a checkpoint of a
            converted run).

    Raises:
        ValueError: unknown ``name`` (with the closest names suggested), a timm name outside the zoo without
            ``convert_sc``, ``convert_sc`` on an SC model, an SCConv option on a model that is neither an SC
            model nor converted, or an invalid SCConv option (e.g. ``pool_type="min"``, ``upsample="bicubic"``,
            ``pooling_r=0``), ``pretrained=True`` for a name without released weights.
        CheckpointError: unreadable ``pretrained`` file, or one of another architecture;
            ``scnet.models.download.DownloadError`` (a CheckpointError) when the download fails or its hash
            differs.
    """
    convert_sc = overrides.pop("convert_sc", False)
    if not isinstance(convert_sc, bool):
        raise ValueError(f"convert_sc must be True or False, got {convert_sc!r}")
    _check_name(name, convert_sc)
    sc_options: dict[str, Any] = {}
    if name not in zoo.SC_MODELS:
        sc_options = {k: overrides.pop(k) for k in SC_OPTION_KEYS if k in overrides}
        if sc_options and not convert_sc:
            key = next(iter(sc_options))
            raise ValueError(f"{key} is an SCConv option, and {name} is not an SC model (convert_sc=True makes it one)")
    if "norm_layer" in overrides and name not in zoo.SC_MODELS:
        overrides["norm_layer"] = _norm_layer_for_timm(overrides["norm_layer"])
    features_only = overrides.pop("features_only", False)
    out_indices = overrides.pop("out_indices", (0, 1, 2, 3, 4))
    if pretrained is True:  # after the checks: a bad argument fails before a download
        pretrained = zoo.released_weights(name)  # then loaded as any local file is
    elif pretrained is False:
        pretrained = None
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **overrides)
    if convert_sc:
        loaded = pretrained is not None and _fits(model, pretrained)
        if loaded:
            load_weights(model, pretrained)
        model.sc_conversion = _convert(model, sc_options)
        minimum = _min_input_size(name, {"num_classes": num_classes, **overrides}, sc_options)
        if minimum is not None:
            model.min_input_size = minimum
        if loaded:
            pretrained = None
    if pretrained is not None:
        load_weights(model, pretrained)
    if features_only:
        # Load first, then wrap, so classification checkpoints serve as backbone weights.
        model = FeatureListNet(model, out_indices=out_indices)
    return model
