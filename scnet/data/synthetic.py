"""ImageNet-sized JPEGs that cost what photos cost to load: for loader and end-to-end speed runs, not accuracy.

``make_synthetic(out, classes, per_class, val_per_class)`` writes ``out/train/<class>/*.JPEG`` and
``out/val/<class>/*.JPEG`` (the ImageFolder layout ``scnet-train`` and ``scnet-bench data`` read) plus
``out/classes.txt`` and a manifest ``out/synthetic.json`` (counts, mean file size, seconds taken).

Each image is 500x375 or 375x500 (the common ImageNet sizes; the orientation is drawn per image), multi-scale
value noise (smooth shading plus detail at four scales) with pixel noise on top, saved at JPEG quality 90:
about 100 kB a file, like an ImageNet training photo, so decoding costs about what it does on the real set.
The labels mean nothing (every class is drawn alike); for a learnable set use ``scnet.data.demo``.

Images are drawn in parallel processes (all cores by default: ~8 ms an image on one core of the 2-core dev
VM). Each file's pixels depend only on (seed, split, class, number).

    python -m scnet.data.synthetic --out /tmp/jpeg --classes 10 --per-class 100 --val-per-class 10
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

MANIFEST = "synthetic.json"
SPLITS = ("train", "val")
# (cells along the long side, blend weight): smooth shading first, then ever finer detail.
_OCTAVES = ((4, 1.0), (16, 0.45), (60, 0.35), (250, 0.3))
# Pixel-noise spread range: with the octaves above, 90-110 kB per 500x375 file at quality 90.
_NOISE = (32, 65)
# Images per task of the process pool: large enough that the pool's overhead is negligible.
_CHUNK = 64


def class_names(classes: int) -> list[str]:
    """Folder names of ``classes`` classes; they sort in class order."""
    return [f"class_{i:04d}" for i in range(classes)]


def synthetic_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One RGB image of ``size`` (width, height) with photo-like JPEG cost: multi-scale noise, pixel noise."""
    w, h = size
    side = max(w, h)
    image = None
    for cells, weight in _OCTAVES:
        cw, ch = max(2, cells * w // side), max(2, cells * h // side)
        layer = Image.frombytes("RGB", (cw, ch), rng.bytes(cw * ch * 3)).resize(size, Image.BILINEAR)
        image = layer if image is None else Image.blend(image, layer, weight)
    spread = int(rng.integers(*_NOISE))
    noise = Image.frombytes("RGB", size, rng.bytes(w * h * 3)).point([v * spread // 256 for v in range(256)] * 3)
    return ImageChops.add(image, noise, offset=-(spread // 2))


def synthetic_jpeg(seed: int, split: str, class_index: int, number: int, size: tuple[int, int], quality: int) -> bytes:
    """The JPEG bytes of one image: a pure function of its arguments. Portrait or landscape is drawn per image."""
    rng = np.random.default_rng([seed, SPLITS.index(split), class_index, number])
    w, h = size
    if rng.random() < 0.5:
        w, h = h, w
    buf = io.BytesIO()
    synthetic_image(rng, (w, h)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_chunk(task: tuple[Path, int, str, int, int, int, tuple[int, int], int]) -> tuple[int, int]:
    """Write images ``start`` .. ``stop - 1`` of one class; returns (files, bytes)."""
    folder, seed, split, class_index, start, stop, size, quality = task
    total = 0
    for number in range(start, stop):
        data = synthetic_jpeg(seed, split, class_index, number, size, quality)
        (folder / f"{folder.name}_{split}_{number:06d}.JPEG").write_bytes(data)
        total += len(data)
    return stop - start, total


def make_synthetic(
    out: Path,
    classes: int = 10,
    per_class: int = 100,
    val_per_class: int = 10,
    size: tuple[int, int] = (500, 375),
    quality: int = 90,
    seed: int = 0,
    workers: int | None = None,
) -> dict:
    """Write the set under ``out`` (which must be missing or empty); returns the manifest it also writes.

    ``workers`` processes draw the images (default: every core this process may use; 1 = in this process).

    Raises:
        ValueError: a count, size or worker count below 1, a quality outside 1-100, or a non-empty ``out``.
    """
    out = Path(out)
    if classes < 1 or per_class < 1 or val_per_class < 1:
        raise ValueError("classes, per-class and val-per-class must be at least 1 (an empty class folder is an error)")
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {size[0]}x{size[1]}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1-100, got {quality}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder (the set is written only into a new one)")
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    names = class_names(classes)
    tasks = []
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(names):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, count, _CHUNK):
                tasks.append((folder, seed, split, c, start, min(start + _CHUNK, count), tuple(size), quality))
    start_time = time.perf_counter()
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
            results = list(pool.map(_write_chunk, tasks))
    else:
        results = [_write_chunk(t) for t in tasks]
    seconds = time.perf_counter() - start_time
    files = sum(n for n, _ in results)
    total = sum(b for _, b in results)
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    manifest = {
        "classes": classes,
        "train_per_class": per_class,
        "val_per_class": val_per_class,
        "size": f"{size[0]}x{size[1]}",
        "quality": quality,
        "seed": seed,
        "files": files,
        "bytes": total,
        "mean_kb": total / max(files, 1) / 1000,
        "workers": workers,
        "seconds": seconds,
        "images_per_second": files / max(seconds, 1e-9),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 500x375, got {text!r}") from None
    return w, h


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m scnet.data.synthetic`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m scnet.data.synthetic",
        description="Write ImageNet-sized JPEGs (about 100 kB each) as train/ and val/ ImageFolder trees, for "
        "speed runs (the labels mean nothing).",
    )
    parser.add_argument("--out", required=True, help="output folder; must be missing or empty")
    parser.add_argument("--classes", type=int, default=10, help="number of class folders (default 10)")
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=10, help="validation images per class (default 10)")
    parser.add_argument("--size", type=_size, default=(500, 375), help="WIDTHxHEIGHT; half the images are turned")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0, help="the drawing's seed: the same seed, the same images")
    parser.add_argument("--workers", type=int, default=None, help="processes drawing images (default: all cores)")
    parser.add_argument("--json", metavar="FILE", help="also write the manifest here as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        manifest = make_synthetic(
            Path(args.out),
            classes=args.classes,
            per_class=args.per_class,
            val_per_class=args.val_per_class,
            size=args.size,
            quality=args.quality,
            seed=args.seed,
            workers=args.workers,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(manifest, indent=2) + "\n")
    except (OSError, ValueError) as e:
        print(f"scnet.data.synthetic: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
