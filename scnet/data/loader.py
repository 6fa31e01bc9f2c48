"""From a data root to batches: dataset choice, distributed sampling, workers, collation.

The path from config to device reads top to bottom:
``build_dataset`` (which reader for the folder) -> ``build_loader`` (sampler, workers, pinned
memory) -> ``scnet.data.device.DeviceLoader`` (copy to the device, normalise there).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..runtime.distributed import rank_and_world
from .folders import (
    BadImages,
    ImageFolderDataset,
    check_bad_images,
    is_imagenet_v2,
    read_class_list,
    scan_image_folder,
    scan_imagenet_v2,
)
from .sample import Decode, DecodedHere, EncodedImage
from .shards import ShardDataset
from .transforms import SampleTransform


def build_dataset(
    root: Path,
    split: str,
    transform: SampleTransform | None = None,
    bad_images: BadImages = "replace",
    seed: int = 0,
    shuffle: bool = False,
    classes: Sequence[str] | None = None,
    classes_from: str = "the class list",
    decode: Decode = "cpu",
    draft: bool = False,
) -> Dataset:
    """The dataset for ``root/split``: WebDataset-style shards (an ``index.json``), an ImageNet-V2
    folder (numeric class folders), or an ImageFolder tree.

    Class index = position in ``classes`` when given (e.g. the training split's list for its val split,
    or a checkpoint's: shard labels are mapped by class name, a class folder or shard class outside the
    list is an error naming it and ``classes_from``), else in ``root/classes.txt`` when present, else in
    the split's own sorted folder names (shards: their index's list). ImageNet-V2 folders keep their
    numbers as indices. ``bad_images`` says what a file that does not decode does (see
    :data:`~scnet.data.folders.BadImages`): ``"replace"`` for training, ``"skip"`` for evaluation.
    ``decode="device"`` leaves JPEGs encoded for the device, their crops drawn; ``draft`` decodes training crops
    at a reduced JPEG DCT scale (see :func:`~scnet.data.sample.prepare_sample`).
    """
    check_bad_images(bad_images)
    folder = Path(root) / split
    if (folder / "index.json").is_file():
        return ShardDataset(
            folder,
            transform=transform,
            shuffle=shuffle,
            seed=seed,
            bad_images=bad_images,
            equal_per_rank=shuffle,
            classes=classes,
            classes_from=classes_from,
            decode=decode,
            draft=draft,
        )
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such data folder (expected {root}/{split}/<class>/<images> or shards)")
    if is_imagenet_v2(folder):
        classes, samples = scan_imagenet_v2(folder, classes, classes_from)
    elif classes is not None:
        classes, samples = scan_image_folder(folder, classes, classes_from)
    else:
        classes, samples = scan_image_folder(folder, read_class_list(root), str(Path(root) / "classes.txt"))
    return ImageFolderDataset(
        samples, classes, transform=transform, bad_images=bad_images, seed=seed, decode=decode, draft=draft
    )


class EpochSampler(Sampler):
    """Distributed sampler yielding ``(index, epoch)`` pairs, resumable mid-epoch.

    - ``shuffle``: a permutation seeded by ``seed + epoch``, the same on every rank.
    - ``even=True`` (training): every rank gets ``ceil(n / world)`` indices, the permutation padded
      by wrapping around, as ``DistributedSampler`` does, so all ranks step equally often.
    - ``even=False`` (evaluation): rank r gets indices r, r + world, ...: every sample exactly once,
      no duplicates, ranks may differ by one.
    - ``set_epoch(e, start=k)``: this rank's iteration of epoch e begins at its k-th index, which is
      how a run resumed mid-epoch sees the order the uninterrupted run would have.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool,
        seed: int = 0,
        even: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        default_rank, default_world = rank_and_world()
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.even = even
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and where this rank starts in it."""
        self.epoch = epoch
        self.start = start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if self.even:
            total = math.ceil(self.num_samples / self.world_size) * self.world_size
            order = (order * math.ceil(total / max(len(order), 1)))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(i, self.epoch) for i in self._indices()[self.start :]])

    def __len__(self) -> int:
        return max(len(self._indices()) - self.start, 0)


@dataclass
class Batch:
    """A collated batch: uint8 images (N, 3, H, W), int64 labels, the bad files replaced in it, and the
    bad files skipped (left out of it: N may be 0).

    With ``data.decode=gpu`` some samples arrive still encoded: ``encoded`` holds them, ``encoded_at`` their
    positions among the batch's ``labels``, and ``images`` only the others, in order; ``decoded_here`` names
    the files that were decoded in the worker all the same (not for the device decoder), with the reason.
    """

    images: torch.Tensor
    labels: torch.Tensor
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    encoded: list[EncodedImage] = field(default_factory=list)
    encoded_at: list[int] = field(default_factory=list)
    decoded_here: list[str] = field(default_factory=list)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pin-memory thread (encoded bytes stay as they are: the decoder reads them)."""
        return dataclasses.replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory())


class ReplacedLog:
    """Files met during an epoch, for the end-of-epoch report: by default the bad files each replaced by
    another sample; ``what`` names another kind (e.g. files decoded on the CPU under ``data.decode=gpu``)."""

    def __init__(self, what: str = "bad samples replaced") -> None:
        self.what = what
        self.names: list[str] = []

    def update(self, names: Sequence[str]) -> None:
        """Add the names of one batch."""
        self.names.extend(names)

    def summary(self, limit: int = 5) -> str:
        """One line: how many, and the first few file names; empty when there were none."""
        if not self.names:
            return ""
        unique = sorted(set(self.names))
        return f"{len(self.names)} {self.what} ({len(unique)} files): {_first_names(unique, limit)}"

    def reset(self) -> None:
        """Start a new epoch."""
        self.names.clear()


def _first_names(names: Sequence[str], limit: int) -> str:
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def skipped_summary(names: Sequence[str], limit: int = 5) -> str:
    """One line for the bad files an evaluation skipped (left out of its counts); empty when none."""
    if not names:
        return ""
    unique = sorted(set(names))
    return f"{len(unique)} unreadable file(s) skipped, not counted: {_first_names(unique, limit)}"


def collate(items: Sequence[tuple[torch.Tensor | EncodedImage | DecodedHere | None, int, tuple[str, ...]]]) -> Batch:
    """Stack ``(image, label, names)`` items into a :class:`Batch`.

    An item without image is a bad file skipped by its reader (``bad_images="skip"``): it is left out of
    the images and labels, and its names go to ``Batch.skipped``; other items' names were replaced. An
    :class:`~scnet.data.sample.EncodedImage` goes to ``Batch.encoded`` (the device decodes it).
    """
    good = [it for it in items if it[0] is not None]
    ready, encoded, encoded_at, here = [], [], [], []
    for position, (image, _, _) in enumerate(good):
        if isinstance(image, EncodedImage):
            encoded.append(image)
            encoded_at.append(position)
            continue
        if isinstance(image, DecodedHere):
            here.append(f"{image.name} ({image.reason})")
            image = image.image
        ready.append(image)
    # With no decoded image, an empty stack (its pixel size is unknown, and nothing will read it).
    images = torch.stack(ready) if ready else torch.zeros((0, 3, 0, 0), dtype=torch.uint8)
    labels = torch.tensor([it[1] for it in good], dtype=torch.int64)
    replaced = [name for it in good for name in it[2]]
    skipped = [name for it in items if it[0] is None for name in it[2]]
    return Batch(images, labels, replaced, skipped, encoded, encoded_at, here)


def private_generator(seed: int = 0) -> torch.Generator:
    """A DataLoader's own generator. Each ``iter(loader)`` draws its workers' base seed from the loader's
    generator, by default the process's global one, which also serves the trainer's drop-path and random
    erasing and is restored from a checkpoint: an iterator made on resume would shift those draws. The
    workers' seeds do not decide augmentations (each sample is seeded, see ``sample_seed``)."""
    return torch.Generator().manual_seed(seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    train: bool,
    seed: int = 0,
    pin_memory: bool | None = None,
    prefetch_factor: int = 4,
    persistent: bool = True,
) -> DataLoader:
    """A DataLoader of :class:`Batch` for this process; ``batch_size`` is per process.

    Map-style datasets get an :class:`EpochSampler` (reach it as ``loader.sampler`` to call
    ``set_epoch``); shard datasets split themselves across ranks and workers.
    """
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    worker_args = dict(persistent_workers=persistent, prefetch_factor=prefetch_factor) if workers > 0 else {}
    worker_args["generator"] = private_generator(seed)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            drop_last=train,
            **worker_args,
        )
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, even=train)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=train,
        **worker_args,
    )


class IndexedDataset(Dataset):
    """A map-style dataset whose items also carry their index: ``(image, label, names, index)``.

    Labels kept outside the dataset (ImageNet-ReaL) are looked up by the index that travelled with the
    batch, which stays right whatever the sampler, the worker count or the number of processes.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key):
        # EpochSampler yields (index, epoch) pairs; plain samplers yield ints.
        index = key[0] if isinstance(key, tuple) else key
        image, label, names = self.dataset[key]
        return image, label, names, index


def collate_indexed(items: Sequence[tuple]) -> tuple[Batch, torch.Tensor]:
    """Stack ``(image, label, names, index)`` items into ``(Batch, indices)``; the indices are those of the
    batch's images (a skipped item, without image, has none there)."""
    batch = collate([item[:3] for item in items])
    indices = [item[3] for item in items if item[0] is not None]
    return batch, torch.tensor(indices, dtype=torch.int64)


def build_eval_loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool | None = None) -> DataLoader:
    """A loader over this process's share of ``dataset`` for :func:`evaluate`; ``batch_size`` is per process.

    Map-style datasets are read in order through ``EpochSampler(even=False)`` and yield
    ``(Batch, indices)``; shard datasets (built with ``equal_per_rank=False``, as
    ``build_dataset(shuffle=False)`` does) yield :class:`Batch`. Workers are not persistent: the loader
    is read once.
    """
    if isinstance(dataset, IterableDataset):
        return build_loader(dataset, batch_size, workers, train=False, pin_memory=pin_memory, persistent=False)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        IndexedDataset(dataset),
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle=False, even=False),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate_indexed,
        pin_memory=pin_memory,
        drop_last=False,
        generator=private_generator(),
        **(dict(prefetch_factor=4) if workers > 0 else {}),
    )
