"""One path from a checkpoint file to a ready model and its accuracy, shared by every consumer of a checkpoint.

:func:`load_checkpoint` reads this project's training checkpoints (``{"model", "model_ema", "config",
"classes", ...}``) and the original release's bare state_dicts (``.pth`` or ``.safetensors``), builds the
model its config describes, SCConv options included (they change what the model computes, not its
state_dict), loads the weights strictly and resolves the evaluation transform. :func:`prepare_evaluation`
reads a data split for it, labelled by the checkpoint's class list, and :meth:`Evaluation.run` counts
exactly, also under torchrun; :func:`evaluate_checkpoint` does both. ``scnet-eval``, the table runner and
later tools go through here, so that one checkpoint is one model everywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.models import clean_state_dict, get_pretrained_cfg
from torch import nn

from ..data.device import DevicePreprocess
from ..data.device_decode import DeviceDecoder
from ..data.transforms import INTERPOLATIONS, EvalTransform, eval_transform
from ..models import CheckpointError, create_model
from ..models.options import model_options
from ..models.weights import check_compatible, unreadable

# What a model whose default cfg lacks a setting is evaluated at: the release's settings (and timm's usual).
DEFAULT_IMAGE_SIZE, DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION = 224, 0.875, "bilinear"
# Loader workers per process: a few are enough to keep one evaluation fed, more only cost memory.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
# Training checkpoints: where the weights sit, EMA first when asked (timm's order, as read_state_dict).
_EMA_KEYS, _MODEL_KEYS = ("state_dict_ema", "model_ema"), ("state_dict", "model")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint made ready to run: its model, what the model is, and how its inputs are prepared."""

    model: nn.Module  # weights loaded strictly, eval mode, on ``device`` (channels_last on CUDA)
    name: str  # architecture, as create_model knows it
    num_classes: int
    classes: list[str] | None  # index -> class name, as the training split had them (None: not saved)
    config: dict[str, Any]  # the training run's resolved config ({} for a bare state_dict)
    options: dict[str, Any]  # create_model options from the config (SCConv options that differ from the release)
    is_training_checkpoint: bool
    has_ema: bool  # the file holds EMA weights (model_ema), whichever weights were loaded
    ema: bool  # the EMA weights were loaded
    image_size: int
    crop_pct: float
    interpolation: str
    path: Path
    device: torch.device

    def eval_transform(self) -> EvalTransform:
        """Decoded uint8 image -> the model's evaluation crop: resize to image_size / crop_pct, centre-crop."""
        return eval_transform(self.image_size, self.crop_pct, self.interpolation)

    def preprocess(self, decoder: DeviceDecoder | None = None) -> DevicePreprocess:
        """uint8 batch on the device -> normalised float, in the memory format the model was placed in; with
        ``decoder``, the JPEGs a loader left encoded are decoded and cropped on the device first."""
        return DevicePreprocess(self.device, channels_last=self.device.type == "cuda", decoder=decoder)


# ----------------------------------------------------------------------------------------------- reading


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)`` (no code runs), memory-mapped when the format allows: the weights
    are copied into the model once, never held twice."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format


def _is_safetensors(path: Path) -> bool:
    """By content, not by name: an 8-byte little-endian header length, then the JSON header's ``{``."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path) -> dict:
    """A bare state_dict; with ``scnet-export``'s metadata (architecture, options, classes, transform) it
    reads as a training checkpoint, so the exported file rebuilds the function it was exported from."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    weights = load_file(str(path))
    if "architecture" not in meta:
        return weights
    try:
        model = {"name": meta["architecture"], **json.loads(meta.get("model_args", "{}"))}
        if "num_classes" in meta:
            model["num_classes"] = int(meta["num_classes"])
        data = {"image_size": int(meta["image_size"])} if "image_size" in meta else {}
        if "crop_pct" in meta:
            data["crop_pct"] = float(meta["crop_pct"])
        if "interpolation" in meta:
            data["interpolation"] = meta["interpolation"]
        classes = json.loads(meta["classes"]) if "classes" in meta else None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable scnet metadata ({e})") from e
    return {"model": weights, "config": {"model": model, "data": data}, "classes": classes}


def _read_file(path: Path) -> dict:
    """The dict stored at ``path``: a training checkpoint or a bare state_dict."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj: object = _read_safetensors(path) if _is_safetensors(path) else _torch_load(path)
    except Exception as e:  # noqa: BLE001 - any read failure becomes one clear line
        raise unreadable(path, e) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint or state_dict (a {type(obj).__name__})")
    return obj


def _state_dict(obj: dict, path: Path, ema: bool, training: bool) -> dict[str, torch.Tensor]:
    """The weights to load: the EMA ones with ``ema``; wrapper prefixes (DDP, torch.compile) removed."""
    if ema:
        key = next((k for k in _EMA_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            what = "training checkpoint" if training else "bare state_dict"
            raise CheckpointError(f"{path}: --ema, but this {what} holds no EMA weights (model_ema)")
        weights = obj[key]
    else:
        weights = obj[next(k for k in _MODEL_KEYS if isinstance(obj.get(k), dict))] if training else obj
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: not a state_dict (entry {key!r} is a {type(value).__name__})")
    return clean_state_dict(weights)


def _classes(obj: dict, path: Path) -> list[str] | None:
    classes = obj.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: its 'classes' is not a list of class names")
    return classes


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------------------------- the model


def _model_name(path: Path, requested: str | None, configured: object, training: bool) -> str:
    """The architecture: a training checkpoint's config names it, a bare state_dict needs ``requested``."""
    if isinstance(configured, str) and configured:
        # Another name would build another function around these weights (and drop the config's options).
        if requested and requested != configured:
            raise ValueError(f"{path}: --model {requested}, but its config trained {configured} (leave --model out)")
        return configured
    if requested:
        return requested
    if training:
        raise ValueError(f"{path}: its config names no model; name the architecture with --model")
    raise ValueError(f"{path} is a bare state_dict: name its architecture with --model (e.g. scnet50)")


def _num_classes(path: Path, configured: object, state_dict: dict[str, torch.Tensor], head: str) -> int:
    """The classifier's rows, checked against the config's ``model.num_classes``. They must agree: a model
    built with another count would keep a fresh head (fine-tuning), never wanted when evaluating."""
    weight = state_dict.get(f"{head}.weight")
    rows = int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None
    if configured == "auto":  # scnet-train saves the count it resolved; "auto" says only that the head tells
        configured = None
    if configured is not None and rows is not None and configured != rows:
        raise CheckpointError(f"{path}: its config says {configured} classes but its classifier has {rows}")
    num_classes = rows if rows is not None else configured
    if not isinstance(num_classes, int) or num_classes < 1:
        raise CheckpointError(f"{path}: no classifier to evaluate (cannot tell the number of classes)")
    return num_classes


def _head_name(name: str) -> str:
    """The classifier's module name in the state_dict (``fc`` for every ResNet-like zoo model)."""
    cfg = get_pretrained_cfg(name)
    return cfg.classifier if cfg is not None and isinstance(cfg.classifier, str) else "fc"


def _options(path: Path, model_section: dict) -> dict[str, Any]:
    try:
        return model_options(model_section, training=False)
    except ValueError as e:  # an SC option on a baseline: the file's config is at fault
        raise CheckpointError(f"{path}: its config's {e}") from e


def _first(*values: Any) -> Any:
    """The first value that is not None (0 and "" count as given, so that they are rejected, not ignored)."""
    return next((v for v in values if v is not None), None)


def _transform_settings(
    model: nn.Module, data: dict, image_size: int | None, crop_pct: float | None, interpolation: str | None
) -> tuple[int, float, str]:
    """Image size, crop_pct and interpolation: as given, else the checkpoint's config, else the model's
    default cfg (224 px, 0.875, bilinear for the SC models; timm's own for the baselines)."""
    default = getattr(model, "pretrained_cfg", None) or {}
    size = _first(image_size, data.get("image_size"), default.get("input_size"), DEFAULT_IMAGE_SIZE)
    size = size[-1] if isinstance(size, list | tuple) else size  # [3, H, W] or [H, W]
    crop = _first(crop_pct, data.get("crop_pct"), default.get("crop_pct"), DEFAULT_CROP_PCT)
    interp = _first(interpolation, data.get("interpolation"), default.get("interpolation"), DEFAULT_INTERPOLATION)
    if int(size) < 1 or not float(crop) > 0:
        raise ValueError(f"image size must be positive and crop_pct above 0, got {size} and {crop}")
    if interp not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interp!r}")
    return int(size), float(crop), str(interp)


def load_checkpoint(
    path: str | os.PathLike,
    model_name: str | None = None,
    ema: bool = False,
    image_size: int | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Read ``path`` and build its model, weights loaded strictly, in eval mode on ``device``.

    Args:
        path: a training checkpoint of this project, or a bare state_dict (``.pth`` / ``.safetensors``).
        model_name: the architecture; required for a bare state_dict; for a training checkpoint it may
            only repeat its config's (another name is an error, not an override).
        ema: load the EMA weights (``model_ema``); an error when the file holds none.
        image_size, crop_pct, interpolation: the evaluation transform; each defaults to the checkpoint's
            ``config["data"]``, else to the model's default cfg.
        device: where the model runs (channels_last on CUDA).

    The model is built from the config's ``model`` section through
    :func:`scnet.models.options.model_options`, so options such as ``pooling_r`` are those it trained with.

    Raises:
        CheckpointError: missing or unreadable file, not a state_dict, no EMA weights, class counts that
            disagree, weights of another architecture.
        ValueError: no architecture named, an unknown one, or transform settings the model cannot take.
    """
    path = Path(path)
    obj = _read_file(path)
    training = any(isinstance(obj.get(k), dict) for k in _MODEL_KEYS)
    has_ema = any(isinstance(obj.get(k), dict) for k in _EMA_KEYS)
    state_dict = _state_dict(obj, path, ema, training)
    config = obj.get("config") if training and isinstance(obj.get("config"), dict) else {}
    classes = _classes(obj, path) if training else None
    del obj  # the optimizer state and the other weights are not needed
    section = _section(config, "model")
    name = _model_name(path, model_name, section.get("name"), training)
    num_classes = _num_classes(path, section.get("num_classes"), state_dict, _head_name(name))
    if classes is not None and len(classes) != num_classes:
        raise CheckpointError(f"{path}: it lists {len(classes)} classes but its classifier has {num_classes}")
    options = _options(path, {**section, "name": name})
    model = create_model(name, num_classes=num_classes, **options)  # ValueError naming close names when unknown
    size, crop, interp = _transform_settings(model, _section(config, "data"), image_size, crop_pct, interpolation)
    min_size = getattr(model, "min_input_size", 1)
    if size < min_size:  # fail now, not after the data has been read
        raise ValueError(f"image size {size} is below {name}'s minimum of {min_size} px")
    check_compatible(model, state_dict, str(path))  # one line naming the first mismatching tensor
    model.load_state_dict(state_dict)
    device = torch.device(device)
    # NHWC convolutions are the fast ones on CUDA; preprocess() hands batches over in the same format.
    model = model.to(device, memory_format=torch.channels_last) if device.type == "cuda" else model.to(device)
    model.eval()
    return LoadedCheckpoint(
        model=model,
        name=name,
        num_classes=num_classes,
        classes=classes,
        config=config,
        options=options,
        is_training_checkpoint=training,
        has_ema=has_ema,
        ema=ema,
        image_size=size,
        crop_pct=crop,
        interpolation=interp,
        path=path,
        device=device,
    )


# ----------------------------------------------------------------------------------------------- evaluation
