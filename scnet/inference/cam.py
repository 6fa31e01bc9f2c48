"""Grad-CAM (Selvaraju et al., ICCV 2017): where in the image a model finds the evidence for a class.

For a layer's feature maps ``A_k`` and a class score ``y_c`` (the logit, before softmax), each channel's
weight is its spatially averaged gradient ``a_k = mean_ij dy_c / dA_k(i, j)``; the map is
``ReLU(sum_k a_k A_k)``, upsampled (bilinear) to the input's size and scaled to [0, 1] per image. The
SCNet paper's activation-map figure draws these maps for the last stage (``layer4``) of each network.

Pure torch: a forward hook keeps the layer's output, ``torch.autograd.grad`` takes the score's gradient
with respect to it (no parameter gradients are computed or accumulated).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# How many module names an unknown --layer's message lists besides the close matches.
_LISTED = 8


@dataclass(frozen=True)
class GradCam:
    """Grad-CAM maps of a batch and what they explain."""

    maps: torch.Tensor  # (N, H, W), float in [0, 1], the input's H x W
    classes: torch.Tensor  # (N,) the class each map explains
    probs: torch.Tensor  # (N,) that class's softmax probability
    logits: torch.Tensor  # (N, num_classes)
    layer: str


def default_layer(model: nn.Module) -> str:
    """The last feature stage (``layer4`` for the ResNet family): the last entry of timm's ``feature_info``,
    else the last child module that is not the classifier head."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("module"):
        return str(info[-1]["module"])
    info_fn = getattr(info, "module_name", None)  # timm's FeatureInfo object
    if callable(info_fn):
        return str(info_fn(-1))
    head = {"fc", "head", "classifier", "global_pool"}
    names = [name for name, _ in model.named_children() if name not in head]
    if not names:
        raise ValueError(f"{type(model).__name__} has no child module to take a Grad-CAM of; name one")
    return names[-1]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called ``name`` (as ``named_modules`` spells it, e.g. ``layer4`` or ``layer3.5.conv2``).

    Raises:
        ValueError: no such module; the message lists close names and a few valid ones.
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, list(modules), n=3)
    top = [n for n, _ in model.named_children()][:_LISTED]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(f"no layer {name!r} in {type(model).__name__}: {hint}valid names include {', '.join(top)}")


def _targets(target: int | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    classes = torch.as_tensor(target, device=logits.device).long().reshape(-1).expand(n).clone()
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if bad.numel():
        raise ValueError(f"class {int(bad[0])} out of range: the model has {num_classes} classes (0-{num_classes - 1})")
    return classes


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    layer: str | None = None,
    target: int | torch.Tensor | None = None,
) -> GradCam:
    """Grad-CAM maps of ``images`` (N, 3, H, W, normalised as the model expects) at ``layer``.

    Args:
        model: a classifier; run in its current mode (eval for a meaningful map: load_checkpoint gives eval).
        images: the batch.
        layer: a module name (:func:`find_layer`); default :func:`default_layer` (the last stage).
        target: the class to explain: one for all images, one per image, or None for each image's top class.

    Returns:
        :class:`GradCam`; ``maps`` are zero where the weighted sum is nowhere positive.

    Raises:
        ValueError: an unknown layer, a layer whose output is not an (N, C, h, w) map, a class out of range,
            or a layer the class score does not depend on.
    """
    name = default_layer(model) if layer is None else layer
    module = find_layer(model, name)
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: object) -> None:
        captured.append(output)  # type: ignore[arg-type]  # checked below

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            # Parameters may all be frozen: an input that requires grad keeps the graph through the layer.
            x = images.detach().requires_grad_(True)
            logits = model(x)
            if not captured:
                raise ValueError(f"layer {name!r} is not run by {type(model).__name__}'s forward")
            # A module called several times (shared): the last call is the one nearest the head.
            features = captured[-1]
            if not isinstance(features, torch.Tensor) or features.dim() != 4:
                what = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                raise ValueError(f"layer {name!r} outputs {what}, not a (N, C, h, w) feature map")
            classes = _targets(target, logits)
            score = logits.gather(1, classes[:, None]).sum()  # images are independent: one backward for all
            (grads,) = torch.autograd.grad(score, features, allow_unused=True)
    finally:
        handle.remove()
    if grads is None:
        raise ValueError(f"the class score does not depend on layer {name!r}")
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    # Bilinear upsampling of non-negative values stays non-negative: min is >= 0. Scale each map to [0, 1].
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - low
    maps = torch.where(span > 0, (cam - low) / span.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    logits = logits.detach()
    probs = logits.float().softmax(dim=1).gather(1, classes[:, None])[:, 0]
    return GradCam(maps=maps, classes=classes, probs=probs, logits=logits, layer=name)
