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

import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.device import DevicePreprocess
from ..data.device_decode import DeviceDecoder, device_decoder_works
from ..data.folders import is_imagenet_v2, load_real_labels, read_class_list
from ..data.loader import Batch, EpochSampler, IndexedDataset, build_dataset, build_eval_loader
from ..data.shards import ShardDataset
from ..models import count_macs, count_params
from ..runtime import faults
from ..runtime.distributed import rank_and_world
from ..runtime.precision import AMP_DTYPES, autocast
from .checkpoint import DEFAULT_WORKERS, LoadedCheckpoint

# Positions in the per-rank count vector that all_reduce sums.
_IMAGES, _TOP1, _TOP5, _REAL_CORRECT, _REAL_IMAGES = range(5)


def _check_exact(loader: Iterable) -> None:
    """Refuse a loader that would count some sample twice or not at all under the current process group."""
    _, world = rank_and_world()
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
        preprocess: uint8 -> normalised float on the device (default: ImageNet mean/std); with a decoder when the
            loader leaves JPEGs encoded (data.decode=gpu).

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
    rank, world = rank_and_world()
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
            ready = preprocess.batch(batch)  # decoded on the device first when the loader left JPEGs encoded
            skipped.extend(ready.broken)
            images, labels = ready.images, ready.labels
            if ready.broken:
                if real is not None:
                    raise ValueError(f"ReaL labels with files left out on the device: {', '.join(ready.broken)}")
                if labels.numel() == 0:
                    continue
            with autocast(device.type, dtype):
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


def _class_source(checkpoint: Path, classes: list[str] | None, data: Path, split: str) -> str:
    """Where the labels' class list comes from, as the results report it (``classes_from``)."""
    if classes is not None:
        return f"checkpoint {checkpoint}"
    folder = data / split
    # build_dataset reads classes.txt for ImageFolder trees only: shards have their index, V2 its numbers.
    if read_class_list(data) is not None and not (folder / "index.json").is_file() and not is_imagenet_v2(folder):
        return str(data / "classes.txt")
    return str(folder)


def _check_class_count(count: int, num_classes: int, source: str, folder: Path) -> None:
    """The labels' class list (``count`` classes, from ``source``) must be the model's outputs, one for one."""
    if count == num_classes:
        return
    if source != str(folder):
        raise ValueError(f"{source} lists {count} classes but the model has {num_classes} outputs")
    raise ValueError(
        f"{folder} has {count} classes but the model has {num_classes} outputs "
        "(a partial split needs <data>/classes.txt listing every class)"
    )


@dataclass
class Evaluation:
    """A loaded checkpoint and the split it is evaluated on, read and checked; :meth:`run` counts."""

    loaded: LoadedCheckpoint
    loader: DataLoader
    real_labels: list[list[int]] | None
    info: dict[str, Any]  # the settings the results report, in the order they are written
    progress: bool = False
    decoder: DeviceDecoder | None = None  # decode="gpu": the device side of the loader

    def run(self) -> dict[str, Any]:
        """The results: :attr:`info`, then ``top1``, ``top5``, ``images`` (``real_top1``, ``real_images``),
        ``skipped``, then ``params`` and ``macs`` on rank 0.

        Under torch.distributed every rank calls this and gets the same counts (summed with all_reduce);
        params and MACs are counted on rank 0 alone, which needs no collective.
        """
        loaded = self.loaded
        metrics = evaluate(
            loaded.model,
            self.loader,
            loaded.device,
            self.info["amp"],
            self.real_labels,
            self.progress,
            loaded.preprocess(self.decoder),
        )
        result = {**self.info, **metrics}
        rank, _ = rank_and_world()
        if rank == 0:
            result["params"] = count_params(loaded.model)
            result["macs"] = count_macs(loaded.model, loaded.image_size)
        return result


def prepare_evaluation(
    loaded: LoadedCheckpoint,
    data_root: str | os.PathLike,
    split: str = "val",
    batch_size: int = 256,
    workers: int = DEFAULT_WORKERS,
    amp: str = "none",
    real_labels: str | os.PathLike | None = None,
    strict: bool = False,
    progress: bool = False,
    decode: str = "cpu",
) -> Evaluation:
    """Read ``data_root/split`` for ``loaded``: its evaluation transform, labels by its class list.

    Args:
        loaded: from :func:`load_checkpoint`.
        data_root: the data folder (a name such as ``demo`` is resolved by the caller:
            :func:`scnet.data.builtin.resolve_root`); ``<data_root>/<split>`` is an ImageFolder tree or shards.
        batch_size: global, split across the processes of torch.distributed.
        workers: loader workers per process.
        amp: ``"none"``, ``"bf16"`` or ``"fp16"``.
        real_labels: an ImageNet-ReaL ``real.json``: ReaL top-1 is reported too (image folder splits only).
        strict: a file that does not decode is an error naming it (else it is skipped and listed).
        progress: a progress bar on stderr (rank 0).
        decode: where JPEGs are decoded: ``cpu`` (loader workers), ``gpu`` (resize and centre crop too, on the
            checkpoint's device; a CPU device runs that path with the CPU decoder), ``auto`` (gpu where torchvision
            decodes JPEG on the device, else cpu).

    Labels follow the checkpoint's class list when it saved one, else ``<data_root>/classes.txt``, else
    the split's folders; they must match the model's outputs one for one. Every rank reads the same
    files with the same arguments, so an error here is the same on every rank.

    Raises:
        ValueError: one line naming the folder, file or value at fault.
    """
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be at least 1 and workers at least 0, got {batch_size}, {workers}")
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    if decode not in ("auto", "cpu", "gpu"):
        raise ValueError(f"decode must be auto, cpu or gpu, got {decode!r}")
    if decode == "auto":
        decode = "gpu" if device_decoder_works(loaded.device)[0] else "cpu"
    data = Path(data_root)
    source = _class_source(loaded.path, loaded.classes, data, split)
    transform = loaded.eval_transform()
    dataset = build_dataset(
        data,
        split,
        transform=transform,
        bad_images="raise" if strict else "skip",
        classes=loaded.classes,
        classes_from=f"the classes of {loaded.path}",
        decode="device" if decode == "gpu" else "cpu",
    )
    _check_class_count(len(dataset.classes), loaded.num_classes, source, data / split)
    real = None
    if real_labels is not None:
        samples = getattr(dataset, "samples", None)
        if samples is None:
            raise ValueError("--real-labels needs an image folder split (shards do not keep the file names)")
        real = load_real_labels(Path(real_labels), samples)
    _, world = rank_and_world()
    info = {
        "model": loaded.name,
        "checkpoint": str(loaded.path),
        "ema": loaded.ema,
        "data": str(data),
        "split": split,
        "num_classes": loaded.num_classes,
        "classes_from": source,
        "image_size": loaded.image_size,
        "crop_pct": loaded.crop_pct,
        "interpolation": loaded.interpolation,
        "amp": amp,
        "decode": decode,
        "batch_size": batch_size,
        "world_size": world,
    }
    per_process = math.ceil(batch_size / world)
    loader = build_eval_loader(dataset, per_process, workers, pin_memory=loaded.device.type == "cuda")
    decoder = DeviceDecoder(transform, loaded.device) if decode == "gpu" else None
    return Evaluation(loaded, loader, real, info, progress, decoder)


def evaluate_checkpoint(
    loaded: LoadedCheckpoint,
    data_root: str | os.PathLike,
    split: str = "val",
    batch_size: int = 256,
    workers: int = DEFAULT_WORKERS,
    amp: str = "none",
    real_labels: str | os.PathLike | None = None,
    strict: bool = False,
    progress: bool = False,
    decode: str = "cpu",
) -> dict[str, Any]:
    """Top-1 / top-5 (and ReaL) of ``loaded`` on ``data_root/split``: :func:`prepare_evaluation`, then
    :meth:`Evaluation.run` (see both). Under torch.distributed every rank calls this."""
    return prepare_evaluation(
        loaded, data_root, split, batch_size, workers, amp, real_labels, strict, progress, decode
    ).run()
