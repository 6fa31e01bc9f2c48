"""The device half of ``data.decode=gpu``: decode a batch's JPEGs where the model runs (nvjpeg through
torchvision), then cut, resize and flip each as its worker planned, and run the rest of its augmentations there.

On a CPU device the same code runs with torchvision's CPU decoder standing in for nvjpeg: that is how it is
tested without a GPU, and why its pixels equal the ``data.decode=cpu`` path's there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from .decode import BadImageError, decode_rgb
from .sample import EncodedImage
from .transforms import SampleTransform, seeded


@dataclass
class Decoded:
    """The device's crops of a batch's encoded samples (None where a file failed), and which files it had to
    decode on the CPU (the device decoder refused them) or could not decode at all."""

    crops: list[torch.Tensor | None]
    on_cpu: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)


@functools.cache
def device_decoder_works(device: torch.device) -> tuple[bool, str]:
    """Whether torchvision decodes JPEGs on ``device`` here (tried once a process on a tiny image), and a few
    words why not."""
    if device.type != "cuda":
        return False, f"no JPEG decoder on {device.type} devices"
    try:
        tiny = encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))
        decode_jpeg([tiny], mode=ImageReadMode.RGB, device=device)
    except Exception as e:  # noqa: BLE001 - a torchvision built without nvjpeg raises RuntimeError; any failure means no
        return False, f"torchvision cannot decode JPEG on {device} ({type(e).__name__})"
    return True, f"nvjpeg on {device}"


class DeviceDecoder:
    """Decode ``EncodedImage`` samples on ``device`` and finish them with ``transform`` (its ``apply`` with the
    worker's plan, then its ``augment`` under the sample's seed, replaying the plan's draws first so that the
    generator is where the CPU path's would be)."""

    def __init__(
        self, transform: SampleTransform, device: torch.device, decode: Callable[..., Any] | None = None
    ) -> None:
        self.transform = transform
        self.device = torch.device(device)
        # torchvision's decode_jpeg (nvjpeg on CUDA); another function of its signature in tests.
        self.decode = decode or decode_jpeg

    def _decode_all(self, samples: list[EncodedImage]) -> tuple[list[torch.Tensor | None], list[str], list[str]]:
        """Every sample's full image on the device: the batch in one call; when that fails, one by one, then on
        the CPU for the ones the device decoder refuses; None for a file nothing decodes."""
        datas = [s.data for s in samples]
        try:
            return list(self.decode(datas, mode=ImageReadMode.RGB, device=self.device)), [], []
        except RuntimeError:
            pass  # some file of the batch is refused: find it
        images: list[torch.Tensor | None] = []
        on_cpu, broken = [], []
        for sample in samples:
            try:
                images.append(self.decode(sample.data, mode=ImageReadMode.RGB, device=self.device))
                continue
            except RuntimeError:
                pass
            try:
                images.append(decode_rgb(sample.data, sample.name).to(self.device))
                on_cpu.append(f"{sample.name} (refused by the device decoder)")
            except BadImageError:
                images.append(None)
                broken.append(sample.name)
        return images, on_cpu, broken

    def _finish(self, image: torch.Tensor, sample: EncodedImage) -> torch.Tensor:
        out = self.transform.apply(image, sample.plan)
        if self.transform.extra is None:
            return out
        if sample.seed is None:
            return self.transform.augment(out)

        def replay_then_augment() -> torch.Tensor:
            self.transform.plan(sample.height, sample.width)
            return self.transform.augment(out)

        return seeded(sample.seed, replay_then_augment)

    def __call__(self, samples: list[EncodedImage]) -> Decoded:
        """The finished uint8 crops (3, S, S) on the device, in the order of ``samples``."""
        images, on_cpu, broken = self._decode_all(samples)
        crops = [None if image is None else self._finish(image, s) for image, s in zip(images, samples, strict=True)]
        return Decoded(crops, on_cpu, broken)
