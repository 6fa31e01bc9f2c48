"""Map-style datasets over image folders: ImageFolder trees, ImageNet-V2, and ImageNet-ReaL labels."""

from __future__ import annotations

import json
import os
import re
import typing
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from torch.utils.data import Dataset

from .decode import BadImageError, read_file
from .sample import Decode, prepare_sample
from .transforms import SampleTransform

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp", ".bmp", ".gif")
# How many other samples to try before a run of bad files is an error rather than bad luck.
MAX_REPLACEMENTS = 10

BadImages = Literal["replace", "skip", "raise"]
"""What a reader does with a file that does not decode: ``replace`` it by another sample (training: the
batch stays full), ``skip`` it (evaluation: an item without image, so nothing is counted twice), or
``raise`` :class:`~scnet.data.decode.BadImageError` naming it."""
BAD_IMAGE_POLICIES: tuple[str, ...] = typing.get_args(BadImages)


def check_bad_images(policy: str) -> None:
    """Raise ValueError unless ``policy`` is one of :data:`BAD_IMAGE_POLICIES`."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"bad_images must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {policy!r}")


def _class_dirs(root: Path) -> list[str]:
    if not root.is_dir():
        raise ValueError(f"{root}: no such data folder")
    names = [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    if not names:
        raise ValueError(f"{root}: no class folders")
    return names


def _images_in(folder: Path) -> list[str]:
    files = sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"{folder}: empty class folder (no images)")
    return files


def class_folder_names(root: Path) -> list[str]:
    """The sorted class folder names of an ImageFolder split (its class list when nothing else gives one)."""
    return sorted(_class_dirs(Path(root)))


def scan_image_folder(
    root: Path, classes: Sequence[str] | None = None, source: str = "the class list"
) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (index = position) and ``(path, label)`` samples of an ImageFolder tree.

    Classes are the sorted folder names (wnid order, the convention of ImageNet checkpoints), unless
    ``classes`` gives the full list: then a split that lacks some class folders (a partial val set)
    keeps the same indices as the full set, and a folder outside the list is an error naming it and
    ``source`` (where the list came from).
    """
    root = Path(root)
    present = _class_dirs(root)
    if classes is None:
        classes = sorted(present)
    else:
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise ValueError(
                f"{root / unknown[0]}: class folder {unknown[0]!r} is not in {source} ({len(classes)} classes)"
            )
    classes = list(classes)
    present_set = set(present)
    samples = [
        (str(root / c / f), label) for label, c in enumerate(classes) if c in present_set for f in _images_in(root / c)
    ]
    return classes, samples


def read_class_list(root: Path) -> list[str] | None:
    """``root/classes.txt`` (one class folder name per line, as ``scnet-data`` writes it), if present."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def scan_imagenet_v2(
    root: Path, classes: Sequence[str] | None = None, source: str = "the class list"
) -> tuple[list[str], list[tuple[str, int]]]:
    """ImageNet-V2: folders ``0`` .. ``999`` whose *number* is the class index.

    A string sort would put ``10`` before ``2`` and silently mislabel 990 of 1000 classes. With
    ``classes`` (the model's list, from ``source``), the labels keep their numbers, each checked to be
    an index into that list, which is returned as the classes.
    """
    root = Path(root)
    names = _class_dirs(root)
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise ValueError(f"{root}: not an ImageNet-V2 folder (non-numeric class folder {bad[0]!r})")
    numbered = sorted(names, key=int)
    if classes is not None and int(numbered[-1]) >= len(classes):
        raise ValueError(
            f"{root / numbered[-1]}: ImageNet-V2 class folder {numbered[-1]!r} is not an index into "
            f"{source} ({len(classes)} classes)"
        )
    samples = [(str(root / n / f), int(n)) for n in numbered for f in _images_in(root / n)]
    return (numbered if classes is None else list(classes)), samples


def is_imagenet_v2(root: Path) -> bool:
    """True when every class folder is a number (ImageNet-V2's layout)."""
    try:
        return all(n.isdigit() for n in _class_dirs(Path(root)))
    except ValueError:
        return False


_VAL_INDEX = re.compile(r"ILSVRC2012_val_(\d{8})")


def load_real_labels(path: Path, samples: Sequence[tuple[str, int]]) -> list[list[int]]:
    """ImageNet-ReaL labels (``real.json``) for ``samples``, matched by validation file number.

    ``real.json`` lists, for ILSVRC2012_val_00000001 .. 00050000 in order, the set of classes
    judged correct (possibly empty: such images are left out of ReaL accuracy).
    """
    path = Path(path)
    try:
        real = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read ReaL labels ({e})") from e
    labels = []
    for file, _ in samples:
        m = _VAL_INDEX.search(os.path.basename(file))
        if not m:
            raise ValueError(f"{path}: cannot match {file} to ReaL labels (expected ILSVRC2012_val_NNNNNNNN)")
        idx = int(m.group(1)) - 1
        if not 0 <= idx < len(real):
            raise ValueError(f"{path}: no ReaL labels for {os.path.basename(file)}")
        labels.append(list(real[idx]))
    return labels


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample RNG seed that depends only on (seed, epoch, index): augmentations then do not depend
    on worker count or process, and a resumed run sees exactly what the uninterrupted one did."""
    return zlib.crc32(f"{seed}:{epoch}:{index}".encode())


class ImageFolderDataset(Dataset):
    """Decoded, transformed samples from a list of ``(path, label)``.

    Indices may be plain ints or ``(index, epoch)`` pairs (from :class:`scnet.data.loader.EpochSampler`);
    with a pair, the transform draws from the CPU generator seeded by ``(seed, epoch, index)``
    (:func:`~scnet.data.transforms.seeded`). ``decode="device"`` leaves JPEGs encoded, their crops drawn
    (:func:`~scnet.data.sample.prepare_sample`); ``draft`` decodes training crops at a reduced DCT scale.

    Items are ``(image, label, names)``. What a bad file does depends on ``bad_images``:

    - ``"replace"`` (training): the next good sample stands in; ``names`` are the bad files it replaces
      (empty almost always).
    - ``"skip"`` (evaluation): the item is ``(None, label, (path,))``, a sample without image, which
      :func:`scnet.data.loader.collate` leaves out of the batch and reports as skipped.
    - ``"raise"``: :class:`BadImageError` naming the file.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: SampleTransform | None = None,
        bad_images: BadImages = "replace",
        seed: int = 0,
        decode: Decode = "cpu",
        draft: bool = False,
    ) -> None:
        check_bad_images(bad_images)
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.bad_images = bad_images
        self.seed = seed
        self.decode = decode
        self.draft = draft

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        seed = sample_seed(self.seed, epoch, index) if isinstance(key, tuple) else None
        replaced: list[str] = []
        for attempt in range(MAX_REPLACEMENTS + 1):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = prepare_sample(read_file(path), path, self.transform, seed, self.decode, self.draft)
                break
            except BadImageError:
                if self.bad_images == "raise":
                    raise
                if self.bad_images == "skip":
                    return None, label, (path,)
                replaced.append(path)
            except Exception as e:  # a worker must never die with an anonymous traceback
                raise RuntimeError(f"{path}: transform failed ({type(e).__name__}: {e})") from e
        else:
            raise BadImageError(replaced[0], f"it and the next {MAX_REPLACEMENTS} samples are all unreadable")
        return image, label, tuple(replaced)
