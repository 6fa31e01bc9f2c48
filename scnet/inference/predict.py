"""Top-k classes of image files for a loaded checkpoint: the logic behind ``scnet-predict``.

:func:`find_images` turns the paths a user gives (files, folders searched recursively) into a sorted list
of image files; :func:`predict` runs them through a :class:`~scnet.inference.checkpoint.LoadedCheckpoint`
in batches, with its own evaluation transform, and returns each image's top-k classes with their names
and softmax probabilities. A file that does not decode is reported in :attr:`Predictions.failed`, and
the others still get their answers. Class names come from :func:`class_names`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.decode import BadImageError, load_rgb
from ..data.folders import IMAGE_EXTENSIONS
from .checkpoint import LoadedCheckpoint

IMAGENET_1K_CLASSES = 1000


@dataclass(frozen=True)
class TopClass:
    """One of an image's top-k classes."""

    index: int
    name: str
    prob: float


@dataclass(frozen=True)
class ImagePrediction:
    """An image and its top-k classes, most probable first."""

    image: str
    top: list[TopClass]


@dataclass(frozen=True)
class FailedImage:
    """A file that could not be read as an image, and why (one line)."""

    image: str
    error: str


@dataclass
class Predictions:
    """What :func:`predict` found: answers in input order, files it could not read, where the names came from."""

    predictions: list[ImagePrediction] = field(default_factory=list)
    failed: list[FailedImage] = field(default_factory=list)
    classes_from: str = ""

    def to_json(self) -> dict[str, Any]:
        """``{"classes_from", "predictions": [{"image", "top": [{"index", "name", "prob"}]}], "failed": [...]}``."""
        return {
            "classes_from": self.classes_from,
            "predictions": [asdict(p) for p in self.predictions],
            "failed": [asdict(f) for f in self.failed],
        }


# ----------------------------------------------------------------------------------------------- inputs


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _images_under(folder: Path) -> list[Path]:
    """Image files (by extension) under ``folder`` and its subfolders, hidden ones left out, in tree order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # .git, .ipynb_checkpoints, ...
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append(Path(dirpath) / name)
    # Sorted by path components, not by string: "a/z.jpg" before "a b/x.jpg", whatever the file system's order.
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files that ``paths`` name: a file as given (whatever its extension), a folder's images
    (:data:`~scnet.data.folders.IMAGE_EXTENSIONS`) searched recursively and sorted; each file once, in
    the order given.

    Raises:
        ValueError: a path that does not exist, or a folder with no image in it or below it (one line).
    """
    if not paths:
        raise ValueError("no image or folder given")
    images: dict[Path, None] = {}  # ordered and without duplicates
    for given in map(Path, paths):
        if given.is_dir():
            found = _images_under(given)
            if not found:
                raise ValueError(f"{given}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder or below")
            images.update(dict.fromkeys(found))
        elif given.exists():
            images[given] = None
        else:
            raise ValueError(f"{given}: no such file or folder")
    return list(images)


def class_names(loaded: LoadedCheckpoint) -> tuple[list[str], str]:
    """Index -> class name for ``loaded``'s outputs, and where the names come from.

    The checkpoint's own list when it saved one (this project's training checkpoints); else, for 1000
    outputs (the release's ImageNet files), the ImageNet-1k descriptions shipped with timm
    (``timm.data.ImageNetInfo``, read offline); else the indices themselves.
    """
    if loaded.classes is not None:
        return list(loaded.classes), f"checkpoint {loaded.path}"
    if loaded.num_classes == IMAGENET_1K_CLASSES:
        from timm.data import ImageNetInfo

        return ImageNetInfo("imagenet-1k").label_descriptions(), "ImageNet-1k (timm's class descriptions)"
    return [str(i) for i in range(loaded.num_classes)], "class indices (the checkpoint lists no class names)"


# ----------------------------------------------------------------------------------------------- running


class _ImageFiles(Dataset):
    """Items ``(image or None, position, error or None)``: a bad file is an item without image, so one
    unreadable file never stops the batch (nor a loader worker)."""

    def __init__(self, paths: Sequence[Path], transform) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str | None]:
        path = self.paths[index]
        try:
            return self.transform(load_rgb(path)), index, None
        except BadImageError as e:
            return None, index, str(e)
        except Exception as e:  # noqa: BLE001 - a decoded image the transform cannot take is also a bad file
            return None, index, f"{path}: cannot prepare image ({type(e).__name__}: {e})"


def _collate(items):
    good = [(image, index) for image, index, _ in items if image is not None]
    images = torch.stack([image for image, _ in good]) if good else None
    bad = [(index, error) for image, index, error in items if image is None]
    return images, [index for _, index in good], bad


def _one_line(text: str) -> str:
    return " ".join(text.split())


@torch.inference_mode()
def predict(
    loaded: LoadedCheckpoint,
    images: Sequence[str | os.PathLike],
    topk: int = 5,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
) -> Predictions:
    """The ``topk`` most probable classes of each of ``images`` (files, see :func:`find_images`).

    Each file is decoded to RGB, prepared with ``loaded``'s evaluation transform (resize to
    image_size / crop_pct, centre-crop) and normalisation, and run in batches of ``batch_size``; the
    probabilities are the softmax of the logits, in float32. ``topk`` is capped at the number of classes.
    A file that does not decode goes to :attr:`Predictions.failed` with its one-line reason; the others
    are answered in the order given. ``workers`` loader processes decode ahead of the model (none when
    everything fits in one batch: there is nothing to overlap). ``progress``: a bar on stderr.

    Raises:
        ValueError: ``topk`` or ``batch_size`` below 1, ``workers`` below 0.
    """
    if topk < 1 or batch_size < 1 or workers < 0:
        raise ValueError(
            f"topk and batch_size must be at least 1 and workers at least 0, got {topk}, {batch_size}, {workers}"
        )
    paths = [Path(p) for p in images]
    names, source = class_names(loaded)
    k = min(topk, loaded.num_classes)
    if len(paths) <= batch_size:
        workers = 0
    loader = DataLoader(
        _ImageFiles(paths, loaded.eval_transform()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=loaded.device.type == "cuda",
    )
    preprocess = loaded.preprocess()
    answers: dict[int, ImagePrediction] = {}
    failed: dict[int, FailedImage] = {}
    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=not progress, leave=False)
    for batch, indices, bad in loader:
        for index, error in bad:
            failed[index] = FailedImage(str(paths[index]), _one_line(error))
        if batch is not None:
            logits = loaded.model(preprocess(batch.to(loaded.device, non_blocking=True)))
            probs, classes = logits.float().softmax(dim=-1).topk(k, dim=-1)
            for index, row_probs, row_classes in zip(indices, probs.tolist(), classes.tolist(), strict=True):
                top = [TopClass(c, names[c], p) for p, c in zip(row_probs, row_classes, strict=True)]
                answers[index] = ImagePrediction(str(paths[index]), top)
        bar.update(len(indices) + len(bad))
    bar.close()
    return Predictions(
        predictions=[answers[i] for i in sorted(answers)],
        failed=[failed[i] for i in sorted(failed)],
        classes_from=source,
    )
