"""``scnet-cam``: the SCNet paper's activation-map figure: an image, then each model's Grad-CAM map over it.

Each ``--checkpoint`` is read as ``scnet-eval`` reads it (``scnet.inference.checkpoint``): a training
checkpoint names its model, SCConv options, classes and evaluation crop; a bare state_dict of the
original release (or of a timm baseline) needs its architecture. ``--model`` names one architecture for
all the checkpoints, or one per checkpoint in their order (``auto`` for one whose config names its model).
Each model sees the image through its own evaluation crop (``--image-size`` sets it for all) and its map
explains its top class, or ``--class N``, at ``--layer`` (default: the last stage, ``layer4``). ``--out`` is
the figure; ``--json FILE`` also writes each panel's model, layer, class and probability.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from scnet.cli._common import ListOption, add_json, add_version, fail, plain, write_json
from scnet.data.decode import load_rgb
from scnet.inference.cam import grad_cam
from scnet.inference.checkpoint import LoadedCheckpoint, load_checkpoint
from scnet.inference.predict import class_names
from scnet.viz import CamPanel, MissingMatplotlib, require_matplotlib, save_cam_figure

PROG = "scnet-cam"
AUTO = "auto"


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-cam`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG, description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_version(p)
    p.add_argument(
        "--checkpoint",
        action=ListOption,
        commas=False,
        required=True,
        metavar="FILE",
        help="training checkpoints or bare state_dicts, one panel each",
    )
    p.add_argument(
        "--model",
        action=ListOption,
        metavar="NAME",
        help=f"architecture of a bare state_dict: one for all checkpoints, or one per checkpoint in order ({AUTO}: "
        "the checkpoint's config names it)",
    )
    p.add_argument("--image", required=True, help="the image (JPEG, PNG, ...)")
    p.add_argument(
        "--class", dest="target", type=int, metavar="N", help="the class to explain (default: each model's top class)"
    )
    p.add_argument("--layer", help="module name whose maps are weighted (default: the last stage, e.g. layer4)")
    p.add_argument("--image-size", type=int, help="every model's crop size (default: each checkpoint's, else 224)")
    p.add_argument("--ema", action="store_true", help="use the checkpoints' EMA weights (model_ema)")
    p.add_argument("--out", required=True, help="the figure (PNG, or any format matplotlib writes)")
    add_json(p, "each panel's model, layer, class and probability")
    return p


def _models(checkpoints: list[str], models: list[str] | None) -> list[str | None]:
    """One architecture (or None: the checkpoint's own) per checkpoint."""
    if not models:
        return [None] * len(checkpoints)
    if len(models) == 1:
        models = models * len(checkpoints)
    if len(models) != len(checkpoints):
        raise ValueError(
            f"--model names {len(models)} architectures for {len(checkpoints)} checkpoints: give one, or one per "
            f"checkpoint in order ({AUTO} for a checkpoint that names its model)"
        )
    return [None if m == AUTO else m for m in models]


def _class_label(loaded: LoadedCheckpoint, index: int) -> str:
    """As scnet-predict names it: the checkpoint's classes, ImageNet's for a 1000-class file (its first
    synonym, to fit a title), else the index."""
    names, _ = class_names(loaded)
    name = names[index].split(",")[0]
    return f"class {index}" if name == str(index) else f"{index}: {name}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input or a missing package, with one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        require_matplotlib()  # before any model runs
    except MissingMatplotlib as e:
        return fail(PROG, e)
    if args.image_size is not None and args.image_size < 1:
        return fail(PROG, f"--image-size must be positive, got {args.image_size}")
    if args.target is not None and args.target < 0:
        return fail(PROG, f"--class must be at least 0, got {args.target}")
    try:
        models = _models(args.checkpoint, args.model)
        image_path = Path(args.image)
        if not image_path.is_file():
            raise ValueError(f"{image_path}: no such image file")
        image = load_rgb(image_path)  # BadImageError (a ValueError) names the file
    except ValueError as e:
        return fail(PROG, e)

    panels: list[CamPanel] = []
    records: list[dict] = []
    for checkpoint, model_name in zip(args.checkpoint, models, strict=True):
        try:
            loaded = load_checkpoint(checkpoint, model_name, args.ema, image_size=args.image_size)
            crop = loaded.eval_transform()(image)
            x = loaded.preprocess()(crop[None].to(loaded.device))
            result = grad_cam(loaded.model, x, args.layer, args.target)
        except (ValueError, OSError) as e:  # CheckpointError, unknown layer, class out of range
            return fail(PROG, e)
        index, prob = int(result.classes[0]), float(result.probs[0])
        label = _class_label(loaded, index)
        print(f"{loaded.name} ({loaded.path.name}): {result.layer}, {label}, p={prob:.3f}")
        title = f"{loaded.name} ({loaded.path.name})\n{label} ({prob:.1%})"
        panels.append(CamPanel(image=crop.cpu(), cam=result.maps[0].cpu(), title=title))
        record = {"checkpoint": str(loaded.path), "model": loaded.name, "image_size": loaded.image_size}
        records.append({**record, "layer": result.layer, "class": index, "label": label, "probability": prob})
        del loaded, result  # one model in memory at a time
    try:
        out = save_cam_figure(panels[0].image, panels, args.out, image_title=f"input ({image_path.name})")
    except (OSError, ValueError) as e:
        return fail(PROG, f"{args.out}: {e}")
    print(f"wrote {out} ({1 + len(panels)} panels)")
    if args.json:
        try:
            write_json(args.json, {"image": str(image_path), "figure": str(out), "panels": records})
        except OSError as e:
            return fail(PROG, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
