"""Per-image transforms, run in loader workers on uint8 tensors (torchvision v2).

Output stays uint8 (3xHxW): normalisation, PCA lighting, random erasing and mixup run on whole
batches on the device (``scnet.data.device``), where they are cheap and the host-to-device copy is
4x smaller than float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import get_worker_info
from torchvision.transforms import InterpolationMode, v2

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


def train_transform(
    image_size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    interpolation: str = "bilinear",
    hflip: float = 0.5,
    color_jitter: float = 0.0,
    randaugment: tuple[int, int] | None = None,
) -> v2.Compose:
    """The authors' recipe: RandomResizedCrop + horizontal flip; colour jitter and RandAugment optional.

    Args:
        image_size: output side.
        scale, ratio: RandomResizedCrop's area and aspect-ratio ranges.
        hflip: flip probability.
        color_jitter: brightness/contrast/saturation strength (0.4 in the ResNeXt recipe); 0 = off.
        randaugment: ``(num_ops, magnitude)``, e.g. ``(2, 9)``; None = off.
    """
    steps: list = [
        v2.RandomResizedCrop(image_size, scale=scale, ratio=ratio, interpolation=_interpolation(interpolation)),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if randaugment is not None:
        num_ops, magnitude = randaugment
        steps.append(v2.RandAugment(num_ops=num_ops, magnitude=magnitude, interpolation=_interpolation(interpolation)))
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose(steps)


def apply_seeded(transform: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, seed: int) -> torch.Tensor:
    """``transform(image)`` with the CPU random generator seeded by ``seed`` (torchvision's v2 transforms draw
    from it), so a sample's augmentation depends on its seed alone.

    In a loader worker nothing else draws from that generator, so it is simply reseeded. In the main process
    (``data.workers=0``) the trainer's own draws (drop-path, random erasing) come from it too: its state is
    put back afterwards, so those draws do not depend on the number of workers, nor on which samples were
    read since the last checkpoint.
    """
    # CPU generator only: torch.manual_seed would also (lazily) seed CUDA, 10x the cost.
    if get_worker_info() is not None:
        torch.default_generator.manual_seed(seed)
        return transform(image)
    state = torch.default_generator.get_state()
    try:
        torch.default_generator.manual_seed(seed)
        return transform(image)
    finally:
        torch.default_generator.set_state(state)


def eval_transform(image_size: int = 224, crop_pct: float = 0.875, interpolation: str = "bilinear") -> v2.Compose:
    """Resize the short side to ``image_size / crop_pct`` (256 for 224), then centre-crop ``image_size``."""
    resize = int(math.floor(image_size / crop_pct))
    mode = _interpolation(interpolation)
    # On tensors NEAREST reads source pixel floor(i * scale), half a pixel off PIL's (and so off what the
    # published numbers were evaluated with); NEAREST_EXACT is PIL's floor((i + 0.5) * scale).
    mode = InterpolationMode.NEAREST_EXACT if mode == InterpolationMode.NEAREST else mode
    return v2.Compose([v2.Resize(resize, interpolation=mode), v2.CenterCrop(image_size)])


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
