"""``scnet-predict``: the top-k classes of images, with their names and probabilities.

Reads this project's training checkpoints (model, options, class names and evaluation transform come
from their ``config`` and ``classes``) and the original release's bare state_dicts (``--model`` names the
architecture; 1000 outputs are named by ImageNet-1k's class descriptions, shipped with timm), through
``scnet.inference.checkpoint``, the path every consumer of a checkpoint takes. A folder is searched
recursively for images (.jpeg .jpg .png .webp .bmp .gif), in sorted order; a file named on the command line
is read whatever its extension. Each image is resized to image_size / crop_pct and centre-cropped, as
the checkpoint is evaluated.

Output: per image, its path, then one line per class: probability, class index, class name. A file
that does not decode is one warning line on stderr and the others are still answered.

Exit status: 0 when at least one image was predicted (some may have failed, each with a warning), 1 when
none could be read, 2 for bad input (a missing path, a folder without images, an unreadable checkpoint,
a bad option), with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from scnet.cli._common import add_json, add_version, choose_device, fail, plain, write_json
from scnet.data.transforms import INTERPOLATIONS
from scnet.inference.checkpoint import load_checkpoint
from scnet.inference.predict import Predictions, find_images, predict

PROG = "scnet-predict"


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-predict`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG, description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_version(p)
    p.add_argument(
        "images", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and folders (searched recursively)"
    )
    p.add_argument("--checkpoint", required=True, help="training checkpoint, or a bare state_dict (.pth/.safetensors)")
    p.add_argument(
        "--model",
        help="architecture: required for a bare state_dict (a training checkpoint names its own; another is an error)",
    )
    p.add_argument("--topk", type=int, default=5, help="classes per image (default 5; at most the number of classes)")
    p.add_argument(
        "--batch-size", type=int, default=32, help="images per forward pass, in this one process (default 32)"
    )
    p.add_argument("--workers", type=int, default=0, help="loader processes decoding ahead of the model (default 0)")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's config, else the model's (224)")
    p.add_argument("--crop-pct", type=float, help="resize to image_size / crop_pct, centre-crop (default: config)")
    p.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), help="resize filter (default: config)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights (model_ema)")
    add_json(p, "the results (predictions and failed images)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    return p


# ----------------------------------------------------------------------------------------------- output


def format_predictions(result: Predictions) -> str:
    """One block per image: its path, then ``prob  index  name`` lines, most probable first."""
    blocks = []
    for prediction in result.predictions:
        width = max(len(str(t.index)) for t in prediction.top)
        lines = [prediction.image]
        lines += [f"  {t.prob:.4f}  {t.index:>{width}}  {t.name}" for t in prediction.top]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 (at least one image predicted), 1 (none), 2 (bad input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.topk < 1 or args.batch_size < 1 or args.workers < 0:
            raise ValueError(
                f"--topk and --batch-size must be at least 1 and --workers at least 0, "
                f"got {args.topk}, {args.batch_size}, {args.workers}"
            )
        images = find_images(args.images)  # before the checkpoint: a mistyped path costs no model load
        loaded = load_checkpoint(
            args.checkpoint,
            args.model,
            args.ema,
            args.image_size,
            args.crop_pct,
            args.interpolation,
            choose_device(args.device),
        )
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        return fail(PROG, e)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = predict(loaded, images, args.topk, args.batch_size, args.workers, progress)
    if result.predictions:
        print(format_predictions(result))
    for failure in result.failed:
        print(f"{PROG}: warning: {failure.error}", file=sys.stderr)
    if args.json:
        payload = {
            "checkpoint": str(loaded.path),
            "model": loaded.name,
            "image_size": loaded.image_size,
            "crop_pct": loaded.crop_pct,
            "interpolation": loaded.interpolation,
            "topk": min(args.topk, loaded.num_classes),
            **result.to_json(),
        }
        try:
            write_json(args.json, payload)
        except OSError as e:
            return fail(PROG, e)
    if not result.predictions:
        print(f"{PROG}: error: none of the {len(images)} image(s) could be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
