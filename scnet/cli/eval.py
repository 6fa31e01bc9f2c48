"""``scnet-eval``: top-1 / top-5 (and ImageNet-ReaL) accuracy of a checkpoint on one split.

Reads this project's training checkpoints (model name, classes and evaluation image size come from
their ``config``, unless given here) and the original release's bare state_dicts (``--model`` names the
architecture). Labels follow the checkpoint's class list (its training split's classes), so a val split
that lacks some classes is labelled right; a bare state_dict takes ``<data>/classes.txt`` when present,
else the split's sorted folder names. A file that does not decode is skipped and listed (``skipped`` in
the JSON), never counted. Launched by ``torchrun``, every process evaluates its share and the counts are
summed: the numbers are exactly those of one process. ``--batch-size`` is global, split across processes
(as the trainer's ``data.batch_size``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from timm.models import get_pretrained_cfg
from torch import nn
from torch.utils.data import DataLoader

from scnet.data.builtin import DEMO_FOLDER, resolve_root
from scnet.data.decode import BadImageError
from scnet.data.device import DevicePreprocess
from scnet.data.folders import is_imagenet_v2, load_real_labels, read_class_list
from scnet.data.loader import build_dataset, skipped_summary
from scnet.data.shards import ShardError
from scnet.data.transforms import INTERPOLATIONS, eval_transform
from scnet.engine.distributed import cleanup_distributed, setup_distributed
from scnet.engine.evaluate import AMP_DTYPES, build_eval_loader, evaluate
from scnet.models import CheckpointError, count_macs, count_params, create_model, load_weights

PROG = "scnet-eval"
# Where the release's models and timm's defaults agree: what a bare state_dict is evaluated at.
DEFAULT_IMAGE_SIZE, DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION = 224, 0.875, "bilinear"
# Training checkpoints: where the weights sit, EMA first when asked (timm's order, which read_state_dict follows).
_EMA_KEYS, _MODEL_KEYS = ("state_dict_ema", "model_ema"), ("state_dict", "model")


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-eval`` argument parser."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint, or a bare state_dict (.pth/.safetensors)")
    p.add_argument(
        "--data",
        required=True,
        help=f"data root: <data>/<split> is an ImageFolder tree or shards; demo = the built-in demo set at "
        f"{DEMO_FOLDER} (write ./demo for a folder named demo)",
    )
    p.add_argument("--split", default="val")
    p.add_argument("--model", help="architecture (default: the checkpoint's config; required for a bare state_dict)")
    p.add_argument("--batch-size", type=int, default=256, help="global, split across processes (default 256)")
    p.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="loader workers per process (default: up to 4)"
    )
    p.add_argument("--image-size", type=int, help="default: the checkpoint's config, else 224")
    p.add_argument("--crop-pct", type=float, help="resize to image_size / crop_pct, centre-crop (default: config)")
    p.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), help="resize filter (default: config)")
    p.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights (model_ema)")
    p.add_argument("--real-labels", help="ImageNet-ReaL real.json: also report ReaL top-1")
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype")
    p.add_argument(
        "--strict", action="store_true", help="a file that does not decode is an error naming it (default: skipped)"
    )
    p.add_argument("--json", help="write the results here (rank 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    return p


# ----------------------------------------------------------------------------------------------- checkpoint


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``, memory-mapped when the format allows: only the config and the
    head's shape are needed here, the weights are read by ``load_weights``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format


def inspect_checkpoint(path: Path, ema: bool = False) -> tuple[dict, dict, bool, list[str] | None]:
    """``(state_dict, config, is_training_checkpoint, classes)`` of ``path``; the state_dict is the EMA one
    with ``ema``; ``classes`` is the class list a training checkpoint saved (None for older ones and bare
    state_dicts).

    Raises:
        CheckpointError: missing or unreadable file, not a state_dict, or ``ema`` without EMA weights.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = _torch_load(path)
    except Exception as e:  # noqa: BLE001 - any read failure becomes one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint ({first})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint or state_dict (a {type(obj).__name__})")
    training = any(isinstance(obj.get(k), dict) for k in _MODEL_KEYS)
    if ema:
        key = next((k for k in _EMA_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            what = "training checkpoint" if training else "bare state_dict"
            raise CheckpointError(f"{path}: --ema, but this {what} holds no EMA weights (model_ema)")
        state_dict = obj[key]
    else:
        state_dict = obj[next(k for k in _MODEL_KEYS if isinstance(obj.get(k), dict))] if training else obj
    config = obj.get("config") if training else None
    classes = obj.get("classes") if training else None
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{path}: its 'classes' is not a list of class names")
    return state_dict, (config if isinstance(config, dict) else {}), training, classes


def _section(config: dict, name: str) -> dict:
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def _head_outputs(state_dict: dict, model_name: str) -> int | None:
    """Rows of the checkpoint's classifier weight (None when it has none), found by the model's head name."""
    cfg = get_pretrained_cfg(model_name)
    head = cfg.classifier if cfg is not None and isinstance(cfg.classifier, str) else "fc"
    weight = state_dict.get(f"{head}.weight", state_dict.get(f"module.{head}.weight"))
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


# ----------------------------------------------------------------------------------------------- setup


@dataclass
class Job:
    """Everything resolved before evaluating: what the JSON reports, and what evaluate() needs."""

    model: nn.Module
    loader: DataLoader
    device: torch.device
    real_labels: list[list[int]] | None
    info: dict


def _first(*values):
    """The first value that is not None (0 and "" count as given, so that they are rejected, not ignored)."""
    return next((v for v in values if v is not None), None)


def _settings(args: argparse.Namespace, config: dict, model_name: str) -> tuple[int, float, str]:
    """Image size, crop_pct and interpolation: command line, else the checkpoint's config, else the model's
    default (224 px, 0.875, bilinear for every zoo model)."""
    data = _section(config, "data")
    cfg = get_pretrained_cfg(model_name)
    default_size = cfg.input_size[-1] if cfg is not None else DEFAULT_IMAGE_SIZE
    default_crop = cfg.crop_pct if cfg is not None and cfg.crop_pct else DEFAULT_CROP_PCT
    image_size = _first(args.image_size, data.get("image_size"), default_size)
    image_size = image_size[-1] if isinstance(image_size, list | tuple) else image_size  # [3, H, W] or [H, W]
    crop_pct = _first(args.crop_pct, data.get("crop_pct"), default_crop)
    interpolation = _first(args.interpolation, data.get("interpolation"), DEFAULT_INTERPOLATION)
    if int(image_size) < 1 or not float(crop_pct) > 0:
        raise ValueError(f"image size must be positive and crop_pct above 0, got {image_size} and {crop_pct}")
    return int(image_size), float(crop_pct), str(interpolation)


def _model_name(args: argparse.Namespace, config: dict, training: bool) -> str:
    if args.model:
        return args.model
    name = _section(config, "model").get("name")
    if isinstance(name, str) and name:
        return name
    if training:
        raise ValueError(f"{args.checkpoint}: its config names no model; name the architecture with --model")
    raise ValueError(f"{args.checkpoint} is a bare state_dict: name its architecture with --model (e.g. scnet50)")


def _num_classes(args: argparse.Namespace, config: dict, state_dict: dict, model_name: str) -> int:
    """The config's ``model.num_classes``, checked against the checkpoint's classifier; else the classifier's
    rows. They must agree: ``load_weights`` keeps a fresh head when they differ (fine-tuning), never wanted here."""
    configured = _section(config, "model").get("num_classes")
    head = _head_outputs(state_dict, model_name)
    if configured is not None and head is not None and int(configured) != head:
        raise CheckpointError(f"{args.checkpoint}: its config says {configured} classes but its classifier has {head}")
    num_classes = head if head is not None else configured
    if not num_classes or int(num_classes) < 1:
        raise CheckpointError(f"{args.checkpoint}: no classifier to evaluate (cannot tell the number of classes)")
    return int(num_classes)


def _class_source(checkpoint: Path, classes: list[str] | None, data: Path, split: str) -> str:
    """Where the labels' class list comes from, as the JSON reports it."""
    if classes is not None:
        return f"checkpoint {checkpoint}"
    folder = data / split
    # build_dataset reads classes.txt for ImageFolder trees only: shards have their index, V2 its numbers.
    if read_class_list(data) is not None and not (folder / "index.json").is_file() and not is_imagenet_v2(folder):
        return str(data / "classes.txt")
    return str(folder)


def _check_class_count(count: int, num_classes: int, source: str, folder: Path) -> None:
    """The labels' class list (``count`` classes, from ``source``) must be the model's outputs, one for one."""
    if count == num_classes:
        return
    if source != str(folder):
        raise ValueError(f"{source} lists {count} classes but the model has {num_classes} outputs")
    raise ValueError(
        f"{folder} has {count} classes but the model has {num_classes} outputs "
        "(a partial split needs <data>/classes.txt listing every class)"
    )


def prepare(args: argparse.Namespace, device: torch.device, world: int) -> Job:
    """Read the checkpoint and the data, build and load the model; raise ValueError (one line) on bad input."""
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(
            f"--batch-size must be at least 1 and --workers at least 0, got {args.batch_size}, {args.workers}"
        )
    checkpoint = Path(args.checkpoint)
    state_dict, config, training, classes = inspect_checkpoint(checkpoint, ema=args.ema)
    name = _model_name(args, config, training)
    image_size, crop_pct, interpolation = _settings(args, config, name)
    num_classes = _num_classes(args, config, state_dict, name)
    del state_dict  # only its head's shape was needed; load_weights reads the weights strictly
    if classes is not None and len(classes) != num_classes:
        raise CheckpointError(f"{checkpoint}: it lists {len(classes)} classes but its classifier has {num_classes}")
    model = create_model(name, num_classes=num_classes)  # ValueError naming close names when unknown
    min_size = getattr(model, "min_input_size", 1)
    if image_size < min_size:  # fail now, not after the data has been read
        raise ValueError(f"image size {image_size} is below {name}'s minimum of {min_size} px")
    data = resolve_root(args.data, key="--data")  # never drawn here: the demo set must exist
    source = _class_source(checkpoint, classes, data, args.split)
    dataset = build_dataset(
        data,
        args.split,
        transform=eval_transform(image_size, crop_pct, interpolation),
        bad_images="raise" if args.strict else "skip",
        classes=classes,
        classes_from=f"the classes of {checkpoint}",
    )
    _check_class_count(len(dataset.classes), num_classes, source, data / args.split)
    real_labels = None
    if args.real_labels:
        samples = getattr(dataset, "samples", None)
        if samples is None:
            raise ValueError("--real-labels needs an image folder split (shards do not keep the file names)")
        real_labels = load_real_labels(Path(args.real_labels), samples)
    load_weights(model, checkpoint, use_ema=args.ema)  # CheckpointError for another architecture
    if device.type == "cuda":
        model = model.to(device, memory_format=torch.channels_last)
    model.eval()
    info = {
        "model": name,
        "checkpoint": str(checkpoint),
        "ema": args.ema,
        "data": str(data),
        "split": args.split,
        "num_classes": num_classes,
        "classes_from": source,
        "image_size": image_size,
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "amp": args.amp,
        "batch_size": args.batch_size,
        "world_size": world,
    }
    per_process = math.ceil(args.batch_size / world)
    loader = build_eval_loader(dataset, per_process, args.workers, pin_memory=device.type == "cuda")
    return Job(model, loader, device, real_labels, info)


def run(job: Job, progress: bool = False, amp: str = "none") -> dict:
    """Evaluate (every rank), then complete the report with params and MACs (rank 0 only: no collective)."""
    preprocess = DevicePreprocess(job.device, channels_last=job.device.type == "cuda")
    metrics = evaluate(job.model, job.loader, job.device, amp, job.real_labels, progress, preprocess)
    rank = dist.get_rank() if dist.is_initialized() else 0
    result = {**job.info, **metrics}
    if rank == 0:
        result["params"] = count_params(job.model)
        result["macs"] = count_macs(job.model, job.info["image_size"])
    return result


# ----------------------------------------------------------------------------------------------- output


def _report(result: dict) -> str:
    """One line of top-1/top-5, a second for ReaL when asked."""
    skipped = f", {len(result['skipped'])} skipped" if result["skipped"] else ""
    lines = [
        f"{result['model']} on {result['split']} ({result['images']} images{skipped}, {result['image_size']} px): "
        f"top-1 {result['top1']:.3f}%  top-5 {result['top5']:.3f}%"
    ]
    if "real_top1" in result:
        real = "n/a" if result["real_top1"] is None else f"{result['real_top1']:.3f}%"
        lines.append(f"ReaL top-1 {real} ({result['real_images']} images with ReaL labels)")
    return "\n".join(lines)


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def _fail(error: BaseException, show: bool) -> int:
    if show:
        message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the message
        print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------------------- entry


def _device_kind(requested: str | None) -> str:
    kind = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but CUDA is not available")
    return kind


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    args = build_parser().parse_args(argv)
    # Launched by torchrun: its environment says so. Rank 0 alone prints and writes.
    rank = int(os.environ.get("RANK", "0"))
    try:
        kind = _device_kind(args.device)
    except ValueError as e:
        return _fail(e, show=rank == 0)
    info = setup_distributed(kind)
    device, world = info.device, info.world_size
    try:
        try:
            job = prepare(args, device, world)
        except (ValueError, OSError) as e:
            # Setup reads the same files with the same arguments on every rank: say it once.
            return _fail(e, show=rank == 0)
        try:
            result = run(job, progress=args.progress, amp=args.amp)
        except (ValueError, OSError, ShardError, BadImageError) as e:
            return _fail(e, show=True)  # may be this rank's alone (its share of the files)
        if rank != 0:
            return 0
        print(_report(result))
        if result["skipped"]:
            print(f"{PROG}: warning: {skipped_summary(result['skipped'])}", file=sys.stderr)
        if args.json:
            try:
                _write_json(Path(args.json), result)
            except OSError as e:
                return _fail(e, show=True)
        return 0
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
