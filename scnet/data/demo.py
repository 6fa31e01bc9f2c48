"""A small, procedurally drawn, learnable stand-in for ImageNet, made in seconds without a download.

``make_demo(out)`` writes ``out/train/<class>/*.JPEG`` and ``out/val/<class>/*.JPEG`` in the
ImageFolder layout the real data uses: ten classes of shapes and textures (``00_circle``,
``01_square``, ..., ``09_dots``) at ImageNet-like sizes. Every image has its own position, scale,
tilt, colours and noisy background, so a CNN must look at shape and texture: the mean colour
says nothing about the class.

Posed so that SCNet-50 learns it from scratch in the quickstart's few hundred steps (generator version 2):
shapes stand upright within +-15 degrees, as objects in photos mostly do (a square is not a diamond, a
triangle points up); the figure is darker than its ground, whatever the hues (a figure-ground polarity to
learn once, not both ways); the checkerboard is upright too and the dots are small and sparse, so the two
lattices differ in their edges and coverage rather than by a rotation.

Each file's pixels depend only on (seed, split, class, number), and that is also its name, so the
set can be made in any order, resumed after an interruption, and grown or shrunk in place.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

from ..runtime.files import idle_for, write_bytes_atomic

CLASSES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "hstripes",
    "vstripes",
    "checkerboard",
    "dots",
)

SPLITS = ("train", "val")
MANIFEST = "demo.json"
FORMAT_VERSION = 1
# Bump when the drawing changes: a manifest from another version means every file is redrawn.
GENERATOR_VERSION = 2
JPEG_QUALITY = 90
MIN_SIDE, MAX_SIDE = 300, 500
MIN_ASPECT, MAX_ASPECT = 3 / 4, 4 / 3
# A temp file untouched for this long belongs to a run that died (a live writer finishes in milliseconds).
STALE_TEMP_S = 60.0

# Files this module writes, and nothing else, may be deleted when the set shrinks or the seed changes.
_OWN_FILE = re.compile(r"^\d{2}_[a-z]+_(train|val)_s\d+_\d{5,}\.JPEG$")
_OWN_TEMP = re.compile(r"^\..+\.\d+\.tmp$")
_OWN_CLASS_DIR = re.compile(r"^\d{2}_[a-z]+$")


def class_folders(num_classes: int = len(CLASSES)) -> list[str]:
    """Folder names of the first ``num_classes`` demo classes; they sort in class order."""
    return [f"{i:02d}_{name}" for i, name in enumerate(CLASSES[:num_classes])]


def file_name(folder: str, split: str, seed: int, number: int) -> str:
    """The name of image ``number`` of a class: it names everything its pixels depend on."""
    return f"{folder}_{split}_s{seed}_{number:05d}.JPEG"


# ----------------------------------------------------------------------------------------------- drawing


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) in [300, 500] px with an aspect ratio within [3/4, 4/3], like most ImageNet photos."""
    while True:
        w, h = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
        if MIN_ASPECT <= w / h <= MAX_ASPECT:
            return w, h


# Rec. 601 luma weights: how bright a colour looks.
_LUMA = np.array([0.299, 0.587, 0.114])
# Shapes and the checkerboard stand upright within this many degrees.
TILT_DEGREES = 15.0


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Background and foreground colours, any hue (so mean colour carries no class), well apart, the
    foreground the darker of the two."""
    while True:
        bg, fg = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(fg - bg) > 120 and (bg - fg) @ _LUMA > 60:
            return bg, fg


def _shaded(rng: np.random.Generator, size: tuple[int, int], colour: np.ndarray, amplitude: float) -> Image.Image:
    """A plane of ``colour`` with slow variation (shading, blotches): a few random cells upsampled."""
    cells = int(rng.integers(2, 6))
    small = colour + rng.uniform(-amplitude, amplitude, size=(cells, cells, 3))
    return Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize(size, Image.BICUBIC)


def _polygon(cx: float, cy: float, radii: np.ndarray, angles: np.ndarray, theta: float) -> list[tuple[float, float]]:
    """Vertices at polar (radius, angle) around (cx, cy), the whole figure rotated by theta."""
    a = angles + theta
    return list(zip((cx + radii * np.cos(a)).tolist(), (cy + radii * np.sin(a)).tolist(), strict=True))


def _ellipse(cx: float, cy: float, r: float, aspect: float, theta: float, n: int = 72) -> list[tuple[float, float]]:
    """A rotated ellipse with semi-axes r and r * aspect, as a polygon."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x, y = r * np.cos(t), r * aspect * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    return list(zip((cx + c * x - s * y).tolist(), (cy + s * x + c * y).tolist(), strict=True))


def _shape_mask(name: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A filled shape, upright within TILT_DEGREES, big enough that most random-resized crops still show it."""
    w, h = size
    r = rng.uniform(0.26, 0.42) * min(w, h)
    # The centre may sit a little past the point where the shape touches the border, never further.
    cx = rng.uniform(0.8 * r, w - 0.8 * r)
    cy = rng.uniform(0.8 * r, h - 0.8 * r)
    tilt = math.radians(rng.uniform(-TILT_DEGREES, TILT_DEGREES))
    up = -math.pi / 2  # image y grows downwards: a vertex at angle -90 degrees points up
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    if name in ("circle", "ring"):
        aspect, theta = rng.uniform(0.85, 1.0), rng.uniform(0, 2 * math.pi)
        draw.polygon(_ellipse(cx, cy, r, aspect, theta), fill=255)
        if name == "ring":
            draw.polygon(_ellipse(cx, cy, r * rng.uniform(0.45, 0.65), aspect, theta), fill=0)
    elif name == "square":
        angles = np.arange(4) * (math.pi / 2) + math.pi / 4  # sides horizontal and vertical
        draw.polygon(_polygon(cx, cy, np.full(4, r), angles, tilt), fill=255)
    elif name == "triangle":
        angles = np.arange(3) * (2 * math.pi / 3)
        draw.polygon(_polygon(cx, cy, np.full(3, r * 1.1), angles, up + tilt), fill=255)
    elif name == "star":
        angles = np.arange(10) * (math.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, r * 1.1, r * rng.uniform(0.38, 0.5))
        draw.polygon(_polygon(cx, cy, radii, angles, up + tilt), fill=255)
    elif name == "cross":
        a = r * rng.uniform(0.15, 0.22)  # half the arm width
        local = np.array([(a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r)])
        local = np.concatenate([local, -local])  # the other two arms, by point symmetry
        c, s = math.cos(tilt), math.sin(tilt)
        pts = [(cx + c * x - s * y, cy + s * x + c * y) for x, y in local.tolist()]
        draw.polygon(pts, fill=255)
    else:
        raise ValueError(f"not a shape: {name}")
    return mask


def _texture_mask(name: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A periodic pattern inside a large random rectangle (>= 60% of each side, so any crop of
    half the width and height overlaps it)."""
    w, h = size
    s = min(w, h)
    # Coordinates rotated by theta: u along the pattern, v across it; random phase shifts the pattern.
    if name == "hstripes":
        theta = math.radians(rng.uniform(-25, 25))
    elif name == "vstripes":
        theta = math.radians(90 + rng.uniform(-25, 25))
    elif name == "checkerboard":
        theta = math.radians(rng.uniform(-TILT_DEGREES, TILT_DEGREES))
    else:
        theta = rng.uniform(0, math.pi / 2)
    c, si = math.cos(theta), math.sin(theta)
    x = np.arange(w, dtype=np.float32)[None, :]
    y = np.arange(h, dtype=np.float32)[:, None]
    u = x * c + y * si + rng.uniform(0, 1000)
    v = -x * si + y * c + rng.uniform(0, 1000)
    if name in ("hstripes", "vstripes"):
        period = rng.uniform(0.06, 0.14) * s
        on = np.mod(v, period) < period * rng.uniform(0.4, 0.6)
    elif name == "checkerboard":
        cell = rng.uniform(0.08, 0.14) * s
        on = (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
    elif name == "dots":
        period = rng.uniform(0.09, 0.15) * s
        radius = rng.uniform(0.15, 0.24)  # in periods: 7-18% of the area, against the checkerboard's half
        du = np.mod(u / period, 1.0) - 0.5
        dv = np.mod(v / period, 1.0) - 0.5
        on = du * du + dv * dv < radius * radius
    else:
        raise ValueError(f"not a texture: {name}")
    rw, rh = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x0, y0 = int(rng.integers(0, w - rw + 1)), int(rng.integers(0, h - rh + 1))
    inside = np.zeros((h, w), dtype=bool)
    inside[y0 : y0 + rh, x0 : x0 + rw] = True
    return Image.fromarray(((on & inside) * 255).astype(np.uint8))


def draw_image(class_index: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``class_index``: a shape or texture over a noisy, shaded background."""
    name = CLASSES[class_index]
    size = _image_size(rng)
    bg, fg = _colours(rng)
    background = _shaded(rng, size, bg, amplitude=40)
    foreground = _shaded(rng, size, fg, amplitude=25)
    if name in ("hstripes", "vstripes", "checkerboard", "dots"):
        mask = _texture_mask(name, size, rng)
    else:
        mask = _shape_mask(name, size, rng)
    img = Image.composite(foreground, background, mask)
    # Pixel noise over everything, of random strength, added in PIL (C loops; numpy float passes over
    # the whole image cost more than drawing and encoding together). Random bytes are the cheapest source.
    spread = int(rng.integers(20, 52))
    noise = Image.frombytes("RGB", size, rng.bytes(size[0] * size[1] * 3)).point(
        [v * spread // 256 for v in range(256)] * 3
    )
    return ImageChops.add(img, noise, offset=-(spread // 2))


def encode_jpeg(img: Image.Image) -> bytes:
    """JPEG bytes at ImageNet-like quality."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def demo_image_bytes(seed: int, split: str, class_index: int, number: int) -> bytes:
    """The JPEG bytes of one demo image: a pure function of its arguments."""
    rng = np.random.default_rng([seed, SPLITS.index(split), class_index, number])
    return encode_jpeg(draw_image(class_index, rng))


# ----------------------------------------------------------------------------------------------- files


def _manifest(num_classes: int, train_per_class: int, val_per_class: int, seed: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
        "classes": class_folders(num_classes),
    }


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _expected_files(out: Path, manifest: dict) -> dict[Path, tuple[str, int, int]]:
    """Every image path of the set -> (split, class index, number)."""
    files = {}
    for split in SPLITS:
        count = manifest[f"{split}_per_class"]
        for c, folder in enumerate(manifest["classes"]):
            for i in range(count):
                files[out / split / folder / file_name(folder, split, manifest["seed"], i)] = (split, c, i)
    return files


def _remove_strays(out: Path, keep: set[Path], folders: Sequence[str]) -> None:
    """Delete demo files (by their name pattern) that the requested set does not hold, and dead temp files.

    Only names this module writes are touched, so a wrong ``out`` cannot lose anyone's data.
    """
    now = time.time()
    for split in SPLITS:
        split_dir = out / split
        if not split_dir.is_dir():
            continue
        for class_dir in split_dir.iterdir():
            if not (class_dir.is_dir() and _OWN_CLASS_DIR.match(class_dir.name)):
                continue
            for entry in os.scandir(class_dir):
                path = class_dir / entry.name
                if _OWN_FILE.match(entry.name) and path not in keep:
                    path.unlink(missing_ok=True)
                elif _OWN_TEMP.match(entry.name) and idle_for(path, now) > STALE_TEMP_S:
                    path.unlink(missing_ok=True)
            # A folder of the requested set stays even when empty: a concurrent run may be about to fill it.
            if class_dir.name not in folders and not any(class_dir.iterdir()):
                class_dir.rmdir()


def make_demo(
    out: Path,
    num_classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Draw the demo dataset under ``out`` (``train/`` and ``val/`` ImageFolder trees); returns ``out``.

    Resumable and idempotent: images already there (complete, thanks to atomic renames) are kept,
    and a set that ``out/demo.json`` says is complete with these parameters returns at once.
    ``out/classes.txt`` lists the class folders in class order.
    """
    out = Path(out)
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be between 1 and {len(CLASSES)}, not {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError("train_per_class and val_per_class must be at least 1 (an empty class folder is an error)")
    manifest = _manifest(num_classes, train_per_class, val_per_class, seed)
    files = _expected_files(out, manifest)
    previous = _read_manifest(out)
    if previous == manifest and all(p.is_file() for p in files):
        return out

    # From here on the folder is being changed; a stale manifest must not vouch for it if we die.
    (out / MANIFEST).unlink(missing_ok=True)
    # Files of another drawing code share names with ours but not pixels: redraw them all.
    redraw = previous is not None and previous.get("generator_version") != GENERATOR_VERSION
    _remove_strays(out, set(files), manifest["classes"])
    with tqdm(total=len(files), desc="demo images", unit="img", file=sys.stderr, disable=not progress) as bar:
        for path, (split, c, i) in files.items():
            if redraw or not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(path, demo_image_bytes(seed, split, c, i))
            bar.update()
    write_bytes_atomic(out / "classes.txt", "".join(f"{name}\n" for name in manifest["classes"]).encode())
    write_bytes_atomic(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return out
