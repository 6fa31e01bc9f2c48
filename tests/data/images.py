"""Small real image files for the data tests, made with PIL."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def make_tree(root: Path, counts: dict[str, int], size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """``root/<class>/<i>.JPEG`` with ``counts[class]`` random JPEGs each; returns root."""
    for c, (name, n) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{name}_{i}.JPEG").write_bytes(encode(random_image(*size, seed=seed * 1000 + c * 100 + i)))
    return root
