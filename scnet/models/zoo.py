"""The registered SCNet family: one thin builder per name, each a citizen of timm's registry.

``import scnet`` runs this module, after which ``timm.create_model("scnet50")``,
``timm.data.resolve_data_config`` and timm's tools work on every name here, and
``timm.create_model("scnet50", pretrained=True)`` downloads the original release's weights
(:func:`released_weights`; their URLs are the ``url`` of the names' ``pretrained_cfg``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    register_model,
    resolve_pretrained_cfg,
)

from .download import cached_download, how_to_pass_a_file
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
    # The folder URL the release publishes ``file`` in; "" for a file that is not online.
    folder: str = ""

    @property
    def url(self) -> str:
        """Where the release publishes the file (what ``pretrained=True`` downloads); "" if it is not online."""
        return f"{self.folder.rstrip('/')}/{self.file}" if self.folder else ""


def _released() -> dict[str, PublishedWeights]:
    """The release's checkpoints with their published accuracy and folder URL, from the project's one file of
    published numbers (scnet/models/published.yaml, every number with its source)."""
    return {
        name: PublishedWeights(
            p.checkpoint,
            p.top1,
            p.top5,
            source=p.source.title if p.source else "",
            folder=(p.source.weights_url if p.source else None) or "",
        )
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


def _deep_stem_cfg(**kwargs: Any) -> dict[str, Any]:
    return _cfg(first_conv="conv1.0", **kwargs)


# The released names carry their file's URL: timm lists them as pretrained (timm.list_models(pretrained=True)) and
# its tools see where the weights come from. The download itself is scnet's (_create), so it is hash-checked.
default_cfgs = generate_default_cfgs(
    {
        "scnet50": _cfg(url=PUBLISHED["scnet50"].url),
        "scnet101": _cfg(url=PUBLISHED["scnet101"].url),
        "scnet50_v1d": _deep_stem_cfg(url=PUBLISHED["scnet50_v1d"].url),
        "scnet101_v1d": _deep_stem_cfg(),
        "sc_resnext50_32x4d": _cfg(),
        "sc_resnext101_32x4d": _cfg(),
        "sc_seresnet50": _cfg(),
        "sc_seresnet101": _cfg(),
    }
)


def released_weights(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The local copy of the original release's weights for ``name``, downloaded on first use.

    The file comes from the release's URL (:attr:`PublishedWeights.url`), or from the same file name under
    ``$SCNET_WEIGHTS_URL`` when that environment variable is set (a mirror), and is kept in ``cache_dir``, else in
    torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), so later calls make no request. Its sha256 must start
    with the hex digits in its name (``scnet50-dc6a7e87.pth``).

    Raises:
        ValueError: ``name`` has no released weights (one line naming those that have).
        scnet.models.download.DownloadError: offline, a failed or corrupted download (one line naming the URL
            and how to pass a local file instead).
    """
    weights = PUBLISHED.get(name)
    if weights is None or not weights.url:
        have = ", ".join(n for n, w in PUBLISHED.items() if w.url)
        raise ValueError(
            f"pretrained=True: no released weights for {name} (the SCNet release has them for {have}); "
            + how_to_pass_a_file()
        )
    return cached_download(weights.url, cache_dir=cache_dir)


def _other_source(variant: str, kwargs: dict[str, Any]) -> bool:
    """Whether timm was handed weights of its own for ``variant``: a file, a state_dict, a hub id, a local-dir
    export or another URL (``pretrained_cfg`` / ``pretrained_cfg_overlay``)."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    registered = get_pretrained_cfg(variant)
    other_url = cfg.url and cfg.url != (registered.url if registered else None)
    return bool(cfg.file or cfg.state_dict or cfg.hf_hub_id or cfg.source or other_url)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> SCNet:
    if pretrained and not _other_source(variant, kwargs):
        # The release's file through scnet's download (hash-checked, cached), then timm's own loading of a local
        # file: its classifier adaptation (num_classes) and features_only wrapping apply as for any timm model.
        path = released_weights(variant, cache_dir=kwargs.get("cache_dir"))
        kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(path)}
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
