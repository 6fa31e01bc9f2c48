"""Per-image transforms, run in loader workers on uint8 tensors (torchvision v2).

Output stays uint8 (3xHxW): normalisation, PCA lighting, random erasing and mixup run on whole
batches on the device (``scnet.data.device``), where they are cheap and the host-to-device copy is
4x smaller than float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.utils.data import get_worker_info
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

T = TypeVar("T")

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def _interpolation(name: str) -> InterpolationMode:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {name!r}") from None


@dataclass(frozen=True)
class CropPlan:
    """Where a training sample is cut from its image (``top``, ``left``, ``height``, ``width``, in pixels of the
    full-size image) and whether it is flipped: the random part of RandomResizedCrop + flip, drawn before any
    pixel is decoded so that the cut can be made wherever the image is decoded (worker or device)."""

    top: int
    left: int
    height: int
    width: int
    flip: bool

    def scaled(self, full: tuple[int, int], decoded: tuple[int, int]) -> CropPlan:
        """The same box on the image decoded at ``decoded`` (height, width) instead of its ``full`` size (JPEG DCT
        scaling), kept inside it."""
        (fh, fw), (h, w) = full, decoded
        top, left = min(int(self.top * h / fh), h - 1), min(int(self.left * w / fw), w - 1)
        height = min(max(1, round(self.height * h / fh)), h - top)
        width = min(max(1, round(self.width * w / fw)), w - left)
        return CropPlan(top, left, height, width, self.flip)


def _random_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[int, ...]:
    """A box of random area (``scale`` of the image) and aspect ratio (log-uniform in ``ratio``), at a random place;
    after ten misses, the centred box of the clamped ratio. Draws from the CPU generator."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainTransform:
    """The authors' recipe: RandomResizedCrop + horizontal flip; colour jitter and RandAugment optional.

    In three parts, so that the crop can be cut where the image is decoded: :meth:`plan` draws the crop box and
    the flip from the image's size alone, :meth:`apply` cuts, resizes and flips (no draws; any device),
    :meth:`augment` runs the rest (RandAugment, colour jitter), which draw too. Called on an image, it runs the
    three in that order, so one seed gives the same sample wherever the parts run.

    Args:
        image_size: output side.
        scale, ratio: RandomResizedCrop's area and aspect-ratio ranges.
        interpolation: resampling filter of the resize (and of RandAugment).
        hflip: flip probability.
        color_jitter: brightness/contrast/saturation strength (0.4 in the ResNeXt recipe); 0 = off.
        randaugment: ``(num_ops, magnitude)``, e.g. ``(2, 9)``; None = off.
    """

    def __init__(
        self,
        image_size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bilinear",
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        randaugment: tuple[int, int] | None = None,
    ) -> None:
        self.image_size = image_size
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.interpolation = _interpolation(interpolation)
        steps: list = []
        if randaugment is not None:
            num_ops, magnitude = randaugment
            steps.append(v2.RandAugment(num_ops=num_ops, magnitude=magnitude, interpolation=self.interpolation))
        if color_jitter > 0:
            steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        self.extra = v2.Compose(steps) if steps else None

    def plan(self, height: int, width: int) -> CropPlan:
        """Draw the crop box and the flip for an image of ``height`` x ``width`` (from the CPU generator)."""
        top, left, h, w = _random_box(height, width, self.scale, self.ratio)
        flip = self.hflip > 0 and bool(torch.rand(1).item() < self.hflip)
        return CropPlan(top, left, h, w, flip)

    def apply(self, image: torch.Tensor, plan: CropPlan) -> torch.Tensor:
        """Cut ``plan``'s box out of ``image``, resize it to ``image_size`` (antialiased), flip it if planned."""
        size = [self.image_size, self.image_size]
        out = F.resized_crop(image, plan.top, plan.left, plan.height, plan.width, size, self.interpolation)
        return F.horizontal_flip(out) if plan.flip else out

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """RandAugment and colour jitter, when configured (they draw from the CPU generator)."""
        return image if self.extra is None else self.extra(image)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.augment(self.apply(image, self.plan(image.shape[-2], image.shape[-1])))


train_transform = TrainTransform  # the name the trainer, the benchmarks and the docs call it by


def seeded(seed: int, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` with the CPU random generator seeded by ``seed`` (torchvision's v2 transforms and
    :meth:`TrainTransform.plan` draw from it), so a sample's augmentation depends on its seed alone.

    In a loader worker nothing else draws from that generator, so it is simply reseeded. In the main process
    (``data.workers=0``, or the device side of ``data.decode=gpu``) the trainer's own draws (drop-path, random
    erasing) come from it too: its state is put back afterwards, so those draws do not depend on the number of
    workers, nor on which samples were read since the last checkpoint.
    """
    # CPU generator only: torch.manual_seed would also (lazily) seed CUDA, 10x the cost.
    if get_worker_info() is not None:
        torch.default_generator.manual_seed(seed)
        return fn(*args)
    state = torch.default_generator.get_state()
    try:
        torch.default_generator.manual_seed(seed)
        return fn(*args)
    finally:
        torch.default_generator.set_state(state)


class EvalTransform:
    """Resize the short side to ``image_size / crop_pct`` (256 for 224), then centre-crop ``image_size``.

    No random part: :meth:`plan` is None and :meth:`apply` is the whole transform, on any device.
    """

    def __init__(self, image_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bilinear") -> None:
        self.image_size = image_size
        self.resize = int(math.floor(image_size / crop_pct))
        mode = _interpolation(interpolation)
        # On tensors NEAREST reads source pixel floor(i * scale), half a pixel off PIL's (and so off what the
        # published numbers were evaluated with); NEAREST_EXACT is PIL's floor((i + 0.5) * scale).
        self.interpolation = InterpolationMode.NEAREST_EXACT if mode == InterpolationMode.NEAREST else mode
        self.extra = None

    def plan(self, height: int, width: int) -> None:
        """Nothing to draw."""
        return None

    def apply(self, image: torch.Tensor, plan: None = None) -> torch.Tensor:
        """Resize, then centre-crop."""
        return F.center_crop(F.resize(image, [self.resize], interpolation=self.interpolation), [self.image_size])

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """Nothing random."""
        return image

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.apply(image)


eval_transform = EvalTransform  # the name the evaluation code and the docs call it by


SampleTransform = TrainTransform | EvalTransform
"""What a dataset applies to each image, in the parts that let the crop be cut on the device."""


# ImageNet's RGB covariance, eigen-decomposed (fb.resnet.torch / AlexNet's "PCA lighting"), for pixels in [0, 1].
IMAGENET_PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_PCA_EIGVEC = torch.tensor(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)


def pca_lighting_(images: torch.Tensor, alphastd: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """AlexNet-style PCA lighting noise, in place, on a float batch (N, 3, H, W) with values in [0, 1].

    Each image gets ``eigvec @ (alpha * eigval)`` added to every pixel, ``alpha ~ N(0, alphastd)``.
    """
    if alphastd <= 0:
        return images
    n = images.shape[0]
    alpha = torch.randn(n, 3, generator=generator, device="cpu") * alphastd
    rgb = (alpha * IMAGENET_PCA_EIGVAL) @ IMAGENET_PCA_EIGVEC.T  # (n, 3)
    return images.add_(rgb.to(images.device, images.dtype).view(n, 3, 1, 1))
