"""``scnet-eval``: top-1 / top-5 (and ImageNet-ReaL) accuracy of a checkpoint on one split.

Reads this project's training checkpoints (model name and options, classes and evaluation image size
come from their ``config``, unless given here; ``--model`` may only repeat the config's) and the original
release's bare state_dicts (``--model`` names the architecture), through ``scnet.inference.checkpoint``, the
path every consumer of a checkpoint takes. Labels follow the checkpoint's class list (its training
split's classes), so a val split that lacks some classes is labelled right; a bare state_dict takes
``<data>/classes.txt`` when present, else the split's sorted folder names. A file that does not decode is
skipped and listed (under "skipped" in the --json file), never counted. Launched by ``torchrun``, every process
evaluates its share and the counts are summed: the numbers are exactly those of one process.
``--batch-size`` is global, split across processes (as the trainer's ``data.batch_size``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from scnet.cli._common import add_json, add_version, choose_device, fail, plain, write_json
from scnet.data.builtin import DEMO_FOLDER, resolve_root
from scnet.data.decode import BadImageError
from scnet.data.loader import skipped_summary
from scnet.data.shards import ShardError
from scnet.data.transforms import INTERPOLATIONS
from scnet.inference.accuracy import Evaluation, prepare_evaluation
from scnet.inference.checkpoint import DEFAULT_WORKERS, load_checkpoint
from scnet.runtime.distributed import cleanup_distributed, is_main_process, setup_distributed
from scnet.runtime.precision import AMP_DTYPES

PROG = "scnet-eval"


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-eval`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG, description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_version(p)
    p.add_argument("--checkpoint", required=True, help="training checkpoint, or a bare state_dict (.pth/.safetensors)")
    p.add_argument(
        "--data",
        required=True,
        help=f"data root: <data>/<split> is an ImageFolder tree or shards; demo = the built-in demo set at "
        f"{DEMO_FOLDER} (write ./demo for a folder named demo)",
    )
    p.add_argument("--split", default="val", help="the split folder under --data (default val)")
    p.add_argument(
        "--model",
        help="architecture: required for a bare state_dict (a training checkpoint names its own; another is an error)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="global: images per step across all processes, each of N (torchrun) taking 1/N, as the trainer's "
        "data.batch_size (default 256)",
    )
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="loader workers per process (default: up to 4)")
    p.add_argument("--image-size", type=int, help="default: the checkpoint's config, else the model's (224)")
    p.add_argument(
        "--crop-pct",
        type=float,
        help="resize to image_size / crop_pct, centre-crop (default: config, else the model's)",
    )
    p.add_argument(
        "--interpolation", choices=sorted(INTERPOLATIONS), help="resize filter (default: config, else the model's)"
    )
    p.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights (model_ema)")
    p.add_argument("--real-labels", help="ImageNet-ReaL real.json: also report ReaL top-1")
    p.add_argument("--amp", choices=list(AMP_DTYPES), default="none", help="autocast dtype")
    p.add_argument(
        "--decode",
        choices=["auto", "cpu", "gpu"],
        default="cpu",
        help="where JPEGs are decoded, resized and centre-cropped: cpu in the loader workers (libjpeg-turbo, the "
        "decoder published accuracies were measured with; default), gpu with nvjpeg on the CUDA device (faster; "
        "pixels differ slightly), auto (gpu where torchvision has it)",
    )
    p.add_argument(
        "--strict", action="store_true", help="a file that does not decode is an error naming it (default: skipped)"
    )
    add_json(p, "the results (rank 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--progress", action="store_true", help="progress bar on stderr")
    return p


# ----------------------------------------------------------------------------------------------- setup


def prepare(args: argparse.Namespace, device: torch.device) -> Evaluation:
    """Load the checkpoint and read the split (inference's one path); ValueError (one line) on bad input.

    Every rank reads the same files with the same arguments, so an error here is the same on every rank.
    """
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(
            f"--batch-size must be at least 1 and --workers at least 0, got {args.batch_size}, {args.workers}"
        )
    loaded = load_checkpoint(
        args.checkpoint, args.model, args.ema, args.image_size, args.crop_pct, args.interpolation, device
    )
    data = resolve_root(args.data, key="--data")  # never drawn here: the demo set must exist
    return prepare_evaluation(
        loaded,
        data,
        args.split,
        args.batch_size,
        args.workers,
        args.amp,
        args.real_labels,
        args.strict,
        args.progress,
        args.decode,
    )


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


# ----------------------------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, with one line on stderr)."""
    args = build_parser().parse_args(argv)
    # Launched by torchrun: its environment says so. Rank 0 alone prints and writes.
    main_rank = is_main_process()  # from torchrun's environment: the group does not exist yet
    try:
        kind = choose_device(args.device)
    except ValueError as e:
        return fail(PROG, e, show=main_rank)
    info = setup_distributed(kind)
    try:
        try:
            evaluation = prepare(args, info.device)
        except (ValueError, OSError) as e:
            # Setup reads the same files with the same arguments on every rank: say it once.
            return fail(PROG, e, show=main_rank)
        try:
            result = evaluation.run()
        except (ValueError, OSError, ShardError, BadImageError) as e:
            return fail(PROG, e, show=True)  # may be this rank's alone (its share of the files)
        if not main_rank:
            return 0
        print(_report(result))
        if result["skipped"]:
            print(f"{PROG}: warning: {skipped_summary(result['skipped'])}", file=sys.stderr)
        if args.json:
            try:
                write_json(args.json, result)
            except OSError as e:
                return fail(PROG, e, show=True)
        return 0
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
