"""Loader throughput with the training transforms: ours against the plain torchvision ImageFolder + PIL."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
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


def _ours(root: Path, batch_size: int, image_size: int, workers: int):
    from scnet.data.folders import ImageFolderDataset, scan_image_folder
    from scnet.data.loader import build_loader
    from scnet.data.transforms import train_transform

    classes, samples = scan_image_folder(root)
    dataset = ImageFolderDataset(samples, classes, transform=train_transform(image_size), seed=0)
    return build_loader(dataset, batch_size, workers, train=True, pin_memory=False, persistent=False)


def _baseline(root: Path, batch_size: int, image_size: int, workers: int):
    # The usual reference: torchvision ImageFolder, PIL decoding, v1 transforms, float output.
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    tf = T.Compose(
        [
            T.RandomResizedCrop(image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=tf)
    extra = dict(prefetch_factor=4) if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, **extra)


def bench_data(
    data: str | Path,
    *,
    workers: int = 2,
    batches: int = 20,
    batch_size: int = 32,
    image_size: int = 224,
    warmup: int = 2,
    repeats: int = 3,
) -> dict:
    """Loader throughput with the training transforms, ours against the plain torchvision baseline.

    Args:
        data: an ImageFolder root; its ``train/`` is used when present.
        workers: loader worker processes, the same for both sides.
        batches: measured batches per repeat, after ``warmup`` batches.
        repeats: alternations of ours and the baseline; the medians are reported.

    Returns:
        The JSON-ready result: images per second of each side, their ratio (> 1: ours is faster), the same
        per worker, and the settings.

    Raises:
        ValueError: ``data`` is not a folder.
    """
    root = Path(data)
    if (root / "train").is_dir():
        root = root / "train"
    if not root.is_dir():
        raise ValueError(f"{root}: no such data folder")
    torch.set_num_threads(1)  # each side gets the cores through its workers, not intra-op threads
    ours, base = [], []
    for _ in range(repeats):  # alternate, so drift in the machine's speed hits both
        # A fresh loader each time, dropped after: no side's prefetched leftovers run during the other's turn.
        ours.append(_images_per_second(_ours(root, batch_size, image_size, workers), batches, warmup))
        base.append(_images_per_second(_baseline(root, batch_size, image_size, workers), batches, warmup))
    ips, bips = statistics.median(ours), statistics.median(base)
    per = max(workers, 1)
    return {
        "images_per_second": ips,
        "baseline_images_per_second": bips,
        "ratio": ips / bips,
        "workers": workers,
        "images_per_second_per_worker": ips / per,
        "baseline_images_per_second_per_worker": bips / per,
        "batch_size": batch_size,
        "batches": batches,
        "image_size": image_size,
        "data": str(root),
        "output": {"ours": "uint8 (normalised on the device)", "baseline": "float32 normalised"},
    }
