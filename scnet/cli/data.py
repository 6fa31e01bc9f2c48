"""``scnet-data``: prepare ImageNet from the files people have, write shards, make the demo set."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from scnet.cli._common import ListOption, add_version, plain

SPLITS = ("train", "val")


def _prepare(args: argparse.Namespace) -> int:
    from scnet.data.prepare import prepare_imagenet

    report = prepare_imagenet(Path(args.src), Path(args.out), splits=args.splits, progress=not args.quiet)
    print(report.summary())
    return 0 if report.complete else 1


def _shards(args: argparse.Namespace) -> int:
    from scnet.data.shards import make_shards

    index = make_shards(
        Path(args.data),
        Path(args.out),
        shard_size=args.shard_size,
        splits=args.splits,
        seed=args.seed,
        progress=not args.quiet,
    )
    for split, info in index.items():
        print(f"{split}: {info['num_samples']} samples in {len(info['shards'])} shards under {args.out}/{split}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from scnet.data.demo import make_demo

    root = make_demo(
        Path(args.out),
        num_classes=args.classes,
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"demo dataset ready: {root}/train and {root}/val")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-data`` argument parser."""
    parser = argparse.ArgumentParser(prog="scnet-data", description=plain(__doc__))
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to make")

    p = sub.add_parser(
        "prepare-imagenet",
        help="official ILSVRC2012 tars + devkit, or the Kaggle layout -> train/<wnid>/ and val/<wnid>/",
    )
    p.add_argument("--src", required=True, help="folder with the release files (or the Kaggle download)")
    p.add_argument("--out", required=True, help="output folder; re-running resumes an interrupted run")
    p.add_argument(
        "--splits",
        action=ListOption,
        allowed=SPLITS,
        default=list(SPLITS),
        metavar="SPLIT",
        help="train and/or val (default both)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("make-shards", help="ImageFolder tree -> WebDataset-style tar shards with an index")
    p.add_argument("--data", required=True, help="folder with train/ and val/ class folders")
    p.add_argument("--out", required=True, help="output folder: <out>/<split>/ shards and their index")
    p.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    p.add_argument(
        "--splits", action=ListOption, default=list(SPLITS), metavar="SPLIT", help="the splits to write (default both)"
    )
    p.add_argument("--seed", type=int, default=0, help="order of samples across shards (train is shuffled)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_shards)

    p = sub.add_parser(
        "demo",
        help="a small, procedurally drawn, learnable dataset (no download); at data/demo it is the built-in "
        "set that data.root: demo (scnet-train) and --data demo (scnet-eval) name",
    )
    p.add_argument("--out", required=True, help="output folder (data/demo for the built-in set)")
    p.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("--train-per-class", type=int, default=100, help="training images per class (default 100)")
    p.add_argument("--val-per-class", type=int, default=20, help="validation images per class (default 20)")
    p.add_argument("--seed", type=int, default=0, help="the drawing's seed: the same seed, the same images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError) as e:
        print(f"scnet-data {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
