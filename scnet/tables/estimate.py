"""GPU-hours a row is expected to cost, estimated from its multiply-adds and a published throughput.

No GPU throughput of the SC models has been measured yet (BENCHMARKS.md), so a row's training cost is
scaled from a published ResNet-50 figure by the ratio of MACs: an ESTIMATE, labelled as one wherever it
is shown. MACs are no perfect proxy (SCNet-50 trains at ~0.87x ResNet-50's speed on CPU for ~0.96x its
MACs), so treat the figures as a lower bound for planning.
"""

from __future__ import annotations

import functools

import torch

from ..config import Config
from ..models import count_macs, create_model
from ..models.options import model_options
from ..models.published import throughput_anchor

IMAGENET_TRAIN_IMAGES = 1_281_167


@functools.cache
def gmacs(name: str, image_size: int, **options) -> float:
    """Multiply-adds (G) of one ``image_size`` image through ``name`` built with ``options``, counted on the
    meta device (shapes only: no memory, no time)."""
    with torch.device("meta"):
        model = create_model(name, **options)
        return count_macs(model, image_size) / 1e9


def estimated_gpu_hours(cfg: Config, train_images: int = IMAGENET_TRAIN_IMAGES) -> float:
    """GPU-hours to train ``cfg`` on ``train_images`` images, scaled by MACs from the published anchor."""
    anchor = throughput_anchor()
    options = model_options(cfg.model, training=False)
    ratio = gmacs(cfg.model.name, cfg.data.image_size, **options) / gmacs(anchor.model, 224)
    images_per_second = anchor.images_per_second / ratio
    return cfg.train.epochs * train_images / images_per_second / 3600
