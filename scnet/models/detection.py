"""An SC model as the backbone of torchvision's detectors: the four stages under a feature pyramid (FPN).

The same recipe as torchvision's ``resnet_fpn_backbone``: frozen BatchNorm everywhere (``FrozenBatchNorm2d``;
detection batches are too small for batch statistics), the stem and the first stages frozen, an FPN over the
stages' outputs with an extra max-pooled level. The result plugs into ``FasterRCNN``, ``MaskRCNN`` or
``RetinaNet`` as a ResNet-FPN backbone does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .factory import create_model
from .freeze import freezable, freeze

STAGES = ("layer1", "layer2", "layer3", "layer4")


def detection_backbone(
    name: str = "scnet50",
    pretrained: bool | str | os.PathLike | None = None,
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    out_channels: int = 256,
    norm_layer: Callable[[int], nn.Module] = FrozenBatchNorm2d,
    **options: Any,
) -> BackboneWithFPN:
    """``name`` (an SC model, or a ResNet of the zoo) with an FPN on top, as torchvision's ``resnet_fpn_backbone``.

    Args:
        name: the classification model whose stages are the backbone.
        pretrained: its ImageNet weights, as :func:`~scnet.models.create_model` takes them (``True``, or a file
            such as ``scnet50-dc6a7e87.pth``); the classifier is dropped with the pooling.
        trainable_layers: stages trained, counted from the last (torchvision's meaning): 3 trains layer2-layer4
            and freezes layer1 and the stem; 5 trains everything, 0 nothing.
        returned_layers: the stages (1-4) whose outputs the FPN reads.
        out_channels: the FPN's channels.
        norm_layer: every norm of the network; ``FrozenBatchNorm2d`` as torchvision's detection models use
            (``nn.BatchNorm2d`` trains batch statistics; its frozen stages keep theirs).
        **options: more :func:`~scnet.models.create_model` options (e.g. the SCConv ones).

    Example::

        from torchvision.models.detection import FasterRCNN
        backbone = scnet.models.detection_backbone("scnet50", pretrained="scnet50-dc6a7e87.pth")
        model = FasterRCNN(backbone, num_classes=91)

    Raises:
        ValueError: ``trainable_layers`` outside 0-5, ``returned_layers`` outside 1-4, and what ``create_model``
            raises.
    """
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0-5, got {trainable_layers}")
    if not returned_layers or any(not 1 <= i <= 4 for i in returned_layers):
        raise ValueError(f"returned_layers must be stages in 1-4, got {list(returned_layers)}")
    model = create_model(name, pretrained=pretrained, norm_layer=norm_layer, **options)
    parts = list(freezable(model))  # stem, layer1, ..., layer4
    freeze(model, parts[: len(parts) - trainable_layers])
    channels = {info["module"]: info["num_chs"] for info in model.feature_info}
    return_layers = {STAGES[i - 1]: str(k) for k, i in enumerate(returned_layers)}
    return BackboneWithFPN(
        model,
        return_layers=return_layers,
        in_channels_list=[channels[stage] for stage in return_layers],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )
