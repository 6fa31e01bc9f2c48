"""Freezing a network's stem and stages for fine-tuning: no gradients, and BatchNorm statistics kept as loaded.

A frozen part's parameters stop requiring gradients (the optimizer then holds none of them), and its BatchNorm2d
layers become :class:`EvalBatchNorm2d`: normalising with the running statistics and never updating them, whatever
``model.train()`` says, as torchvision's and timm's frozen-BN fine-tuning does. Unlike torchvision's
``FrozenBatchNorm2d``, the state_dict keeps its names and tensors (``num_batches_tracked`` included), so a frozen
run's checkpoints load into the model built without freezing (evaluation, export, a later fine-tune).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

STEM = "stem"


class EvalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d fixed in evaluation mode: ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``
    in training too, with the statistics never updated. Not a stock BatchNorm2d, so the SC blocks run their plain
    layers around it (``scnet.layers.dispatch.can_run_lean``), not the fused training kernels."""

    @classmethod
    def of(cls, bn: nn.BatchNorm2d | nn.SyncBatchNorm) -> EvalBatchNorm2d:
        """A frozen copy of ``bn``: the same settings, parameters and buffers, on the same device."""
        like = bn.running_mean if bn.running_mean is not None else bn.weight
        factory = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        frozen = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **factory)
        frozen.load_state_dict(bn.state_dict())
        frozen.requires_grad_(bn.weight.requires_grad if bn.weight is not None else False)
        return frozen.eval()

    def train(self, mode: bool = True) -> EvalBatchNorm2d:
        return super().train(False)


def _classifier(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    return get() if callable(get) else None


def _stem_patterns(model: nn.Module) -> list[str]:
    """The regular expressions timm's ``group_matcher`` gives for the model's stem (none without one)."""
    matcher = getattr(model, "group_matcher", None)
    stem = matcher(coarse=True).get(STEM) if callable(matcher) else None
    if stem is None:
        return []
    patterns = stem if isinstance(stem, (list, tuple)) else [stem]
    return [p[0] if isinstance(p, (list, tuple)) else p for p in patterns]


def freezable(model: nn.Module) -> dict[str, list[str]]:
    """What :func:`freeze` can name in ``model``, each with its top-level modules: ``"stem"`` (those the model's
    ``group_matcher`` puts in its stem: ``conv1``, ``bn1``, ``maxpool`` in the SC models and timm's ResNets), then
    every other top-level module with parameters, in order (``layer1`` ... ``layer4``), the classifier excepted."""
    head = _classifier(model)
    patterns = _stem_patterns(model)
    parts: dict[str, list[str]] = {}
    for name, child in model.named_children():
        if any(re.match(p, name) for p in patterns):
            parts.setdefault(STEM, []).append(name)
        elif head is not None and any(m is head for m in child.modules()):
            continue
        elif any(True for _ in child.parameters()):
            parts[name] = [name]
    return parts


def _freeze_norms(model: nn.Module, prefix: str) -> None:
    """Replace each BatchNorm2d (or SyncBatchNorm) at or below ``prefix`` by its :class:`EvalBatchNorm2d` copy."""
    root = model.get_submodule(prefix)
    for name, module in list(root.named_modules(prefix=prefix)):
        if isinstance(module, EvalBatchNorm2d):
            continue
        if type(module) in (nn.BatchNorm2d, nn.SyncBatchNorm):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, EvalBatchNorm2d.of(module))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f"{name} is a {type(module).__name__}: only the statistics of BatchNorm2d and SyncBatchNorm layers "
                "can be frozen"
            )


def freeze(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Freeze the parts of ``model`` that ``names`` lists (``"stem"``, ``"layer1"``, ..., see :func:`freezable`):
    their parameters stop requiring gradients and their BatchNorm2d layers become :class:`EvalBatchNorm2d`.
    Returns ``model``, changed in place; its state_dict keeps every name and value.

    Example, torchvision's detection default (``trainable_layers=3``)::

        model = scnet.create_model("scnet50", pretrained="scnet50-dc6a7e87.pth")
        freeze(model, ["stem", "layer1"])

    Raises:
        ValueError: a name that is not a part of ``model`` (the parts are listed), or a batch norm other than
            BatchNorm2d/SyncBatchNorm in a frozen part.
    """
    parts = freezable(model)
    for name in names:
        if name not in parts:
            arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
            raise ValueError(f"{arch} has no part {name!r} to freeze; choose from {', '.join(parts)}")
    for name in names:
        for child in parts[name]:
            model.get_submodule(child).requires_grad_(False)
            _freeze_norms(model, child)
    return model
