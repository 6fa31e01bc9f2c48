"""``scnet-bench``: measured throughput, each figure beside its baseline from the same run."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch


def _images_per_second(loader: Iterable, batches: int, warmup: int) -> float:
    """Images per second over ``batches`` batches, after ``warmup`` batches (worker start-up, page cache).

    The loader is consumed and its workers shut down before returning.
    """
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    count = 0
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        images = batch.images if hasattr(batch, "images") else batch[0]
        count += images.shape[0]
    elapsed = time.perf_counter() - start
    del it  # shuts the workers down (the loaders here are not persistent)
    return count / elapsed


def _ours(root: Path, args: argparse.Namespace):
    from scnet.data.folders import ImageFolderDataset, scan_image_folder
    from scnet.data.loader import build_loader
    from scnet.data.transforms import train_transform

    classes, samples = scan_image_folder(root)
    dataset = ImageFolderDataset(samples, classes, transform=train_transform(args.image_size), seed=0)
    return build_loader(dataset, args.batch_size, args.workers, train=True, pin_memory=False, persistent=False)


def _baseline(root: Path, args: argparse.Namespace):
    # The usual reference: torchvision ImageFolder, PIL decoding, v1 transforms, float output.
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.RandomResizedCrop(args.image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=tf)
    extra = dict(prefetch_factor=4) if args.workers > 0 else {}
    return DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True, **extra
    )


def bench_data(args: argparse.Namespace) -> dict:
    """Loader throughput with the training transforms, ours against the plain torchvision baseline."""
    root = Path(args.data)
    if (root / "train").is_dir():
        root = root / "train"
    if not root.is_dir():
        raise ValueError(f"{root}: no such data folder")
    torch.set_num_threads(1)  # each side gets the cores through its workers, not intra-op threads
    ours, base = [], []
    for _ in range(args.repeats):  # alternate, so drift in the machine's speed hits both
        # A fresh loader each time, dropped after: no side's prefetched leftovers run during the other's turn.
        ours.append(_images_per_second(_ours(root, args), args.batches, args.warmup))
        base.append(_images_per_second(_baseline(root, args), args.batches, args.warmup))
    ips, bips = statistics.median(ours), statistics.median(base)
    per = max(args.workers, 1)
    return {
        "images_per_second": ips,
        "baseline_images_per_second": bips,
        "ratio": ips / bips,
        "workers": args.workers,
        "images_per_second_per_worker": ips / per,
        "baseline_images_per_second_per_worker": bips / per,
        "batch_size": args.batch_size,
        "batches": args.batches,
        "image_size": args.image_size,
        "data": str(root),
        "output": {"ours": "uint8 (normalised on the device)", "baseline": "float32 normalised"},
    }


def build_parser() -> argparse.ArgumentParser:
    """The ``scnet-bench`` argument parser."""
    parser = argparse.ArgumentParser(prog="scnet-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="loader throughput with the training transforms, against torchvision's")
    p.add_argument("--data", required=True, help="ImageFolder root (its train/ is used when present)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=20, help="measured batches per repeat")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the result here")
    p.set_defaults(func=bench_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (OSError, ValueError) as e:
        print(f"scnet-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
