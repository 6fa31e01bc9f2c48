"""Exact top-1 / top-5 (and ImageNet-ReaL) accuracy, on one process or many.

"Exact" means every sample of the split is counted exactly once whatever the number of processes:
map-style datasets are read through an ``EpochSampler(even=False)`` (rank r takes samples r, r + world,
..., no padding), shard datasets with ``equal_per_rank=False``, no batch is dropped, and the per-rank
integer counts are summed with ``torch.distributed.all_reduce``. Two processes therefore give the
counts of one, not an average of per-rank percentages over padded shares. A file that does not decode
is skipped (the dataset's ``bad_images="skip"``), never replaced by another sample that would then be
counted twice: the counts are over the images evaluated, and the skipped files are listed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from ..data.device import DevicePreprocess
from ..data.loader import Batch, EpochSampler, build_loader, collate, dist_info, private_generator
from ..data.shards import ShardDataset
from . import faults

AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Positions in the per-rank count vector that all_reduce sums.
_IMAGES, _TOP1, _TOP5, _REAL_CORRECT, _REAL_IMAGES = range(5)


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


def _check_exact(loader: Iterable) -> None:
    """Refuse a loader that would count some sample twice or not at all under the current process group."""
    _, world = dist_info()
    if getattr(loader, "drop_last", False):
        raise ValueError("evaluation needs drop_last=False: the last, partial batch counts too")
    dataset = getattr(loader, "dataset", None)
    if isinstance(dataset, IndexedDataset):
        dataset = dataset.dataset
    if getattr(dataset, "bad_images", None) == "replace":
        raise ValueError(
            "evaluation needs a dataset built with bad_images='skip' (or 'raise'): "
            "a replaced bad file would count another sample twice"
        )
    if isinstance(dataset, ShardDataset):
        if dataset.equal_per_rank:
            raise ValueError("a ShardDataset with equal_per_rank=True repeats samples; evaluate without it")
        if dataset.world_size != world:
            raise ValueError(f"the ShardDataset was split for {dataset.world_size} processes, not {world}")
        return
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, EpochSampler):
        if sampler.even:
            raise ValueError("EpochSampler(even=True) pads ranks with repeated samples; evaluate with even=False")
        if sampler.start:
            raise ValueError(f"the sampler starts at its {sampler.start}-th index: the samples before would be lost")
        if sampler.world_size != world:
            raise ValueError(f"the sampler was split for {sampler.world_size} processes, not {world}")
        return
    if world > 1:
        # A plain sampler reads the whole set on every rank: the sum would count each sample `world` times.
        raise ValueError("under torch.distributed, evaluate needs a loader split across ranks (build_eval_loader)")


def _real_table(real_labels: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """ReaL sets as an (N, longest set) int64 tensor padded with -1, so lookups stay on the device."""
    width = max((len(s) for s in real_labels), default=0)
    table = torch.full((len(real_labels), max(width, 1)), -1, dtype=torch.int64)
    for i, labels in enumerate(real_labels):
        if labels:
            table[i, : len(labels)] = torch.as_tensor(labels, dtype=torch.int64)
    return table.to(device)


def _batch_counts(logits: torch.Tensor, labels: torch.Tensor, real_rows: torch.Tensor | None) -> torch.Tensor:
    """``[images, top-1 hits, top-5 hits, ReaL hits, images with a ReaL set]`` of one batch, on its device."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # best first; top-k = top-C below 5 classes
    hits = top == labels[:, None]
    zero = labels.new_zeros(())
    real_hits, real_images = zero, zero
    if real_rows is not None:
        has_set = (real_rows >= 0).any(dim=1)  # an empty set is left out of ReaL accuracy
        real_hits = (real_rows == top[:, :1]).any(dim=1).sum()  # -1 padding never equals a class
        real_images = has_set.sum()
    images = labels.new_tensor(labels.numel())
    return torch.stack([images, hits[:, 0].sum(), hits.any(dim=1).sum(), real_hits, real_images])


def _length(loader: Iterable) -> int | None:
    try:
        return len(loader)  # type: ignore[arg-type]
    except TypeError:  # an IterableDataset without __len__
        return None


def _gather_names(names: list[str], world: int) -> list[str]:
    """Every rank's names (of skipped files), in rank order."""
    if world == 1:
        return list(names)
    parts: list[list[str] | None] = [None] * world
    dist.all_gather_object(parts, names)
    return [name for part in parts for name in (part or [])]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str,
    amp: str = "none",
    real_labels: Sequence[Sequence[int]] | None = None,
    progress: bool = False,
    preprocess: DevicePreprocess | None = None,
) -> dict:
    """Top-1 / top-5 accuracy of ``model`` over every sample that ``loader`` yields on all ranks together.

    Args:
        model: a classifier, already on ``device``; put in eval mode here and restored after.
        loader: batches of uint8 images: ``(Batch, indices)`` from :func:`build_eval_loader`, or plain
            :class:`~scnet.data.loader.Batch` (e.g. from ``build_loader(..., train=False)``).
        device: where to run.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``: autocast dtype on ``device``.
        real_labels: ImageNet-ReaL sets, one per dataset index (see ``scnet.data.folders.load_real_labels``);
            needs the indices that :func:`build_eval_loader` attaches to map-style batches.
        progress: a tqdm bar on rank 0.
        preprocess: uint8 -> normalised float on the device (default: ImageNet mean/std).

    Returns:
        ``top1``, ``top5`` (percent) over the ``images`` evaluated, ``skipped`` (the bad files left out,
        all ranks'), and with ``real_labels`` also ``real_top1`` (percent; None without any ReaL set) and
        ``real_images``.

    Under torch.distributed every rank must call this; the counts are summed with ``all_reduce`` and
    every rank returns the same numbers.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    _check_exact(loader)
    device = torch.device(device)
    preprocess = preprocess or DevicePreprocess(device)
    real = None
    if real_labels is not None:
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "__len__") and len(dataset) != len(real_labels):
            raise ValueError(f"{len(real_labels)} ReaL label sets for a dataset of {len(dataset)} samples")
        real = _real_table(real_labels, device)
    dtype = AMP_DTYPES[amp]
    rank, world = dist_info()
    counts = torch.zeros(5, dtype=torch.int64, device=device)
    skipped: list[str] = []
    was_training = model.training
    model.eval()
    show = progress and rank == 0
    bar = tqdm(loader, total=_length(loader), desc="eval", unit="batch", file=sys.stderr, disable=not show)
    try:
        for item in bar:
            # (Batch, indices) may arrive as a list: older torch pins a tuple into one.
            batch, indices = (item, None) if isinstance(item, Batch) else item
            if real is not None and indices is None:
                raise ValueError("ReaL labels need the sample index with each batch: use build_eval_loader")
            skipped.extend(batch.skipped)
            if batch.labels.numel() == 0:
                continue  # every file of this batch was skipped
            images = preprocess(batch.images.to(device, non_blocking=True))
            labels = batch.labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(images)
            real_rows = real[indices.to(device)] if real is not None else None
            counts += _batch_counts(logits.float(), labels, real_rows)
            faults.point("eval")
    finally:
        bar.close()
        model.train(was_training)
    if world > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n = counts.tolist()
    skipped = _gather_names(skipped, world)
    if n[_IMAGES] == 0:
        raise ValueError(f"no images to evaluate ({len(skipped)} unreadable files skipped)")
    result: dict = {
        "top1": 100.0 * n[_TOP1] / n[_IMAGES],
        "top5": 100.0 * n[_TOP5] / n[_IMAGES],
        "images": n[_IMAGES],
    }
    if real is not None:
        result["real_top1"] = 100.0 * n[_REAL_CORRECT] / n[_REAL_IMAGES] if n[_REAL_IMAGES] else None
        result["real_images"] = n[_REAL_IMAGES]
    result["skipped"] = skipped
    return result
