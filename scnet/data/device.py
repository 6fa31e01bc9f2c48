"""The device side of the input pipeline: copy uint8 batches over (decoding the samples left encoded for the
device), then normalise and augment there."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing

from .device_decode import DeviceDecoder
from .loader import Batch
from .transforms import pca_lighting_


class DeviceBatch(NamedTuple):
    """A batch ready for the model, and what its reading met."""

    images: torch.Tensor  # normalised float (N, 3, H, W) on the device
    labels: torch.Tensor
    replaced: list[str]  # bad files replaced by other samples (in the workers)
    decoded_on_cpu: list[str]  # data.decode=gpu: files decoded on the CPU all the same, each with the reason
    broken: list[str]  # data.decode=gpu: files that passed the worker's check but no decoder could read: left out
    delivered: int  # samples the loader delivered: N + len(broken)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DevicePreprocess:
    """uint8 (N, 3, H, W) on the device -> normalised float; optional PCA lighting (before normalising)
    and timm's random erasing (after, per image, as timm applies it); channels_last on request.

    With a ``decoder`` (``data.decode=gpu``), :meth:`batch` first decodes and crops the samples a batch holds
    still encoded, on the device.
    """

    def __init__(
        self,
        device: torch.device,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        channels_last: bool = False,
        lighting: float = 0.0,
        random_erasing: float = 0.0,
        decoder: DeviceDecoder | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.decoder = decoder
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.channels_last = channels_last
        self.lighting = lighting
        self.erase = RandomErasing(random_erasing, mode="pixel", device=str(device)) if random_erasing > 0 else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.lighting > 0:
            # Lighting is defined on [0, 1] pixels; the offset is the same in 0-255 units scaled by 255.
            x = pca_lighting_(x.div_(255), self.lighting).mul_(255)
        x = x.sub_(self.mean).div_(self.std)
        if self.erase is not None:
            x = self.erase(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, batch: Batch) -> DeviceBatch:
        """A loader's :class:`Batch` on the device, decoded, in its samples' order, and preprocessed."""
        images = batch.images.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        on_cpu, broken = list(batch.decoded_here), []
        if batch.encoded:
            if self.decoder is None:
                raise ValueError("a batch holds samples left encoded (data.decode=gpu) but no DeviceDecoder was given")
            decoded = self.decoder(batch.encoded)
            on_cpu += decoded.on_cpu
            broken = decoded.broken
            images, labels = _assemble(images, labels, batch.encoded_at, decoded.crops)
        return DeviceBatch(self(images), labels, list(batch.replaced), on_cpu, broken, len(batch.labels))


def _assemble(
    ready: torch.Tensor, labels: torch.Tensor, encoded_at: list[int], crops: list[torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's images in sample order: ``ready`` ones (decoded in the workers) at the positions not in
    ``encoded_at``, the device's ``crops`` at those; samples whose crop is None are left out, with their labels."""
    n = labels.shape[0]
    made = [crop for crop in crops if crop is not None]
    like = made[0] if made else ready[0] if len(ready) else None
    if like is None:  # nothing decoded at all
        return ready.new_zeros((0, 3, 0, 0)), labels[:0]
    out = torch.empty((n, *like.shape), dtype=torch.uint8, device=labels.device)
    encoded = set(encoded_at)
    ready_at = [i for i in range(n) if i not in encoded]
    if ready_at:
        out[torch.tensor(ready_at, device=out.device)] = ready
    made_at = [i for i, crop in zip(encoded_at, crops, strict=True) if crop is not None]
    if made_at:
        out[torch.tensor(made_at, device=out.device)] = torch.stack(made)
    if len(made_at) == len(encoded_at):
        return out, labels
    keep = torch.tensor(sorted(ready_at + made_at), device=out.device)
    return out[keep], labels[keep]


class DeviceLoader:
    """Iterate a loader of :class:`Batch`, yielding :class:`DeviceBatch` ready on ``device``.

    On CUDA, the next batch's copy is issued on a side stream while the current one is used, so the
    copy overlaps compute.
    """

    def __init__(self, loader: Iterable[Batch], device: torch.device, preprocess: DevicePreprocess | None = None):
        self.loader = loader
        self.device = torch.device(device)
        self.preprocess = preprocess or DevicePreprocess(self.device)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def _to_device(self, batch: Batch) -> DeviceBatch:
        return self.preprocess.batch(batch)

    def __iter__(self) -> Iterator[DeviceBatch]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self._to_device(batch)
            return
        stream = torch.cuda.Stream(self.device)
        pending = None
        for batch in self.loader:
            with torch.cuda.stream(stream):
                ready = self._to_device(batch)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(stream)
            for t in ready[:2]:
                t.record_stream(torch.cuda.current_stream(self.device))
            pending = ready
        if pending is not None:
            yield pending


def build_mixup(
    mixup_alpha: float, cutmix_alpha: float, label_smoothing: float, num_classes: int, prob: float = 1.0
) -> Mixup | None:
    """timm's batch-level mixup/cutmix (soft targets, label smoothing folded in), or None when both are off."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        prob=prob,
        label_smoothing=label_smoothing,
        num_classes=num_classes,
    )
