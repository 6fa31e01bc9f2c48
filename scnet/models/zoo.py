"""The registered SCNet family: one thin builder per name, each a citizen of timm's registry.

``import scnet`` runs this module, after which ``timm.create_model("scnet50")``,
``timm.data.resolve_data_config`` and timm's tools work on every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .network import SCNet
from .published import published_numbers

PAPER = "Improving Convolutional Networks with Self-Calibrated Convolutions (Liu et al., CVPR 2020)"


@dataclass(frozen=True)
class PublishedWeights:
    """A checkpoint of the original release, with the numbers its authors report for it."""

    file: str
    top1: float
    top5: float
    recipe: str = "100 epochs, SGD lr 0.1/256, step x0.1 at 30/60/90, label smoothing 0.1"
    source: str = "original SCNet release (MCG-NKU)"


def _released() -> dict[str, PublishedWeights]:
    """The release's checkpoints with their published accuracy, from the project's one file of published numbers
    (scnet/models/published.yaml, every number with its source). The files are not bundled or downloaded:
    users pass the path they have to ``create_model(..., pretrained=PATH)``."""
    return {
        name: PublishedWeights(p.checkpoint, p.top1, p.top5, source=p.source.title if p.source else "")
        for name, p in published_numbers().items()
        if p.checkpoint is not None and p.top1 is not None and p.top5 is not None
    }


PUBLISHED: dict[str, PublishedWeights] = _released()

# The timm model each SC name is an A/B partner of (same depth, width, cardinality, attention).
BASELINES: dict[str, str] = {
    "scnet50": "resnet50",
    "scnet101": "resnet101",
    "scnet50_v1d": "resnet50d",
    "scnet101_v1d": "resnet101d",
    "sc_resnext50_32x4d": "resnext50_32x4d",
    "sc_resnext101_32x4d": "resnext101_32x4d",
    "sc_seresnet50": "seresnet50",
    "sc_seresnet101": "seresnet101",
}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        # The smallest input whose last 1/32 map still holds one r=4 pooling window (timm's key, read by
        # its tools when they pick an input size). Per name, so the release's options: a model built with
        # other SCConv options states its own minimum in its min_input_size attribute.
        "min_input_size": (3, 97, 97),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "paper_name": PAPER,
        **kwargs,
    }


def _deep_stem_cfg() -> dict[str, Any]:
    return _cfg(first_conv="conv1.0")


# No URLs: weights are never fetched at run time.
default_cfgs = generate_default_cfgs(
    {
        "scnet50": _cfg(),
        "scnet101": _cfg(),
        "scnet50_v1d": _deep_stem_cfg(),
        "scnet101_v1d": _deep_stem_cfg(),
        "sc_resnext50_32x4d": _cfg(),
        "sc_resnext101_32x4d": _cfg(),
        "sc_seresnet50": _cfg(),
        "sc_seresnet101": _cfg(),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> SCNet:
    return build_model_with_cfg(SCNet, variant, pretrained, **kwargs)


_V1D = dict(deep_stem=True, avg_down=True, avd=True)


@register_model
def scnet50(pretrained: bool = False, **kwargs: Any) -> SCNet:
    """SCNet-50: ResNet-50 layout with self-calibrated bottlenecks."""
    return _create("scnet50", pretrained, layers=(3, 4, 6, 3), **kwargs)


@register_model
def scnet101(pretrained: bool = False, **kwargs: Any) -> SCNet:
    """SCNet-101: ResNet-101 layout with self-calibrated bottlenecks."""
    return _create("scnet101", pretrained, layers=(3, 4, 23, 3), **kwargs)


@register_model
def scnet50_v1d(pretrained: bool = False, **kwargs: Any) -> SCNet:
    """SCNet-50 v1d: deep 32-32-64 stem, average-pool downsampling in shortcut and block."""
    return _create("scnet50_v1d", pretrained, layers=(3, 4, 6, 3), stem_width=32, **_V1D, **kwargs)


@register_model
def scnet101_v1d(pretrained: bool = False, **kwargs: Any) -> SCNet:
    """SCNet-101 v1d: deep 64-64-128 stem, average-pool downsampling in shortcut and block."""
    return _create("scnet101_v1d", pretrained, layers=(3, 4, 23, 3), stem_width=64, **_V1D, **kwargs)


@register_model
def sc_resnext50_32x4d(pretrained: bool = False, **kwargs: Any) -> SCNet:
    """SC-ResNeXt-50 (32x4d): cardinality 32 in each half-width branch; ResNeXt-50's params."""
    return _create("sc_resnext50_32x4d", pretrained, layers=(3, 4, 6, 3), cardinality=32, base_width=4, **kwargs)


@register_model
def sc_resnext101_32x4d(pretrained: bool = False, **kwargs: Any) -> SCNet:
    """SC-ResNeXt-101 (32x4d): cardinality 32 in each half-width branch; ResNeXt-101's params."""
    return _create("sc_resnext101_32x4d", pretrained, layers=(3, 4, 23, 3), cardinality=32, base_width=4, **kwargs)


@register_model
def sc_seresnet50(pretrained: bool = False, **kwargs: Any) -> SCNet:
    """SE-SCNet-50: SE after each block's last BN, where SE-ResNet-50 has it."""
    return _create("sc_seresnet50", pretrained, layers=(3, 4, 6, 3), attn_layer="se", **kwargs)


@register_model
def sc_seresnet101(pretrained: bool = False, **kwargs: Any) -> SCNet:
    """SE-SCNet-101: SE after each block's last BN, where SE-ResNet-101 has it."""
    return _create("sc_seresnet101", pretrained, layers=(3, 4, 23, 3), attn_layer="se", **kwargs)


SC_MODELS: tuple[str, ...] = tuple(BASELINES)


def published_weights(name: str) -> PublishedWeights | None:
    """The original release's checkpoint for ``name``, or None if it had none."""
    return PUBLISHED.get(name)
