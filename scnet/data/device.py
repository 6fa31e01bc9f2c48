"""The device side of the input pipeline: copy uint8 batches over, then normalise and augment there."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing

from .loader import Batch
from .transforms import pca_lighting_

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DevicePreprocess:
    """uint8 (N, 3, H, W) on the device -> normalised float; optional PCA lighting (before normalising)
    and timm's random erasing (after, per image, as timm applies it); channels_last on request."""

    def __init__(
        self,
        device: torch.device,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        channels_last: bool = False,
        lighting: float = 0.0,
        random_erasing: float = 0.0,
    ) -> None:
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


class DeviceLoader:
    """Iterate a loader of :class:`Batch`, yielding ``(images, labels, replaced)`` ready on ``device``.

    On CUDA, the next batch's copy is issued on a side stream while the current one is used, so the
    copy overlaps compute.
    """

    def __init__(self, loader: Iterable[Batch], device: torch.device, preprocess: DevicePreprocess | None = None):
        self.loader = loader
        self.device = torch.device(device)
        self.preprocess = preprocess or DevicePreprocess(self.device)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def _to_device(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        images = batch.images.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        return self.preprocess(images), labels, batch.replaced

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
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
