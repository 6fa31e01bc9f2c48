"""``create_model`` and ``list_models``: one entry point for SC models and their timm baselines."""

from __future__ import annotations

import difflib
import os
from typing import Any

import timm
from timm.models import FeatureListNet
from torch import nn

from . import zoo
from .weights import load_weights

BASELINE_MODELS: tuple[str, ...] = tuple(dict.fromkeys(zoo.BASELINES.values()))


def list_models(include_baselines: bool = True) -> list[str]:
    """Names ``create_model`` accepts: the SC family, then the timm baselines."""
    return list(zoo.SC_MODELS) + (list(BASELINE_MODELS) if include_baselines else [])


def create_model(
    name: str,
    num_classes: int = 1000,
    pretrained: str | os.PathLike | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a zoo model, optionally loading weights from a local file.

    Args:
        name: one of :func:`list_models`.
        num_classes: classifier outputs. If it differs from the checkpoint's, the classifier is
            left freshly initialised and everything else is loaded (fine-tuning).
        pretrained: path to weights: a published ``.pth`` file of the original release, a
            ``.safetensors`` file, or one of this project's checkpoints. Nothing is downloaded.
        **overrides: model options, e.g. ``drop_path_rate=0.1``, ``zero_init_last=True``,
            ``output_stride=16``, ``features_only=True, out_indices=(1, 2, 3, 4)``. SC models also take
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

    Raises:
        ValueError: unknown ``name`` (with the closest names suggested), or an invalid SCConv option
            (e.g. ``pool_type="min"``, ``upsample="bicubic"``, ``pooling_r=0``).
        CheckpointError: unreadable ``pretrained`` file, or one of another architecture.
    """
    known = list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; choose from {', '.join(known)}"
        raise ValueError(f"unknown model {name!r}{hint}")
    features_only = overrides.pop("features_only", False)
    out_indices = overrides.pop("out_indices", (0, 1, 2, 3, 4))
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **overrides)
    if pretrained is not None:
        if isinstance(pretrained, bool):
            raise ValueError("pretrained= takes the path of a local weights file; nothing is downloaded")
        load_weights(model, pretrained)
    if features_only:
        # Load first, then wrap, so classification checkpoints serve as backbone weights.
        model = FeatureListNet(model, out_indices=out_indices)
    return model
