"""One sample from its file's bytes, in a loader worker.

Two ways (``data.decode``): ``cpu`` decodes and transforms it here, as torchvision's reference scripts do;
``gpu`` only reads the JPEG header, draws the sample's crop box and flip (the same seeded draws as the CPU
way) and leaves the bytes for the device to decode (``scnet.data.device_decode``). A file the device decoder
is not given (not a baseline colour JPEG: PNG, greyscale, CMYK, progressive) is decoded here instead, and named.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..runtime.messages import first_line
from .decode import BadImageError, decode_rgb
from .transforms import CropPlan, SampleTransform, TrainTransform, seeded

Decode = Literal["cpu", "device"]
"""Where a dataset's samples are decoded: in the worker (``cpu``), or left encoded for the device (``device``)."""

_SOS, _EOI = b"\xff\xda", b"\xff\xd9"  # JPEG start-of-scan and end-of-image markers


@dataclass
class EncodedImage:
    """A sample left for the device to decode: the file's bytes, its full size, and its drawn crop."""

    data: torch.Tensor  # uint8, 1-D: the file
    name: str
    height: int
    width: int
    plan: CropPlan | None  # None for the evaluation transform (nothing random)
    seed: int | None  # the sample's augmentation seed: the device side replays it for RandAugment / jitter


@dataclass
class DecodedHere:
    """A sample that ``data.decode=gpu`` decoded in the worker all the same, and why (counted per epoch)."""

    image: torch.Tensor
    name: str
    reason: str


@dataclass(frozen=True)
class Header:
    """What a file's header says: its size, and why the device decoder must not get it (None: it may)."""

    height: int
    width: int
    not_for_device: str | None


def _as_bytes(data: bytes | torch.Tensor) -> bytes | memoryview:
    return data if isinstance(data, bytes) else memoryview(data.numpy())


def read_header(data: bytes | torch.Tensor, name: str) -> Header:
    """Parse the header only (no pixels): size, format, colour mode, progressive or not.

    Raises BadImageError (naming ``name``) for what is no image, and for a JPEG cut short (no end-of-image
    marker after its last scan), as decoding it would: the worker can then replace or skip it as the CPU way does.
    """
    raw = _as_bytes(data)
    if len(raw) == 0:
        raise BadImageError(name, "empty file")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size
            fmt, mode, info = img.format, img.mode, img.info
    except Exception as e:  # noqa: BLE001 - PIL raises many types; each means "not an image we can read"
        raise BadImageError(name, "not a recognised image format") from e
    if fmt != "JPEG":
        return Header(height, width, f"{fmt or 'unknown'} file")
    tail = bytes(raw[-65536:]) if len(raw) > 65536 else bytes(raw)
    if tail.rfind(_EOI) < tail.rfind(_SOS) or _EOI not in tail:
        raise BadImageError(name, "JPEG truncated (no end-of-image marker after its last scan)")
    if mode != "RGB":  # greyscale, CMYK, YCCK: nvjpeg's support varies by version and backend
        return Header(height, width, f"{'greyscale' if mode == 'L' else mode} JPEG")
    if info.get("progressive") or info.get("progression"):
        return Header(height, width, "progressive JPEG")
    return Header(height, width, None)


def draft_factor(plan: CropPlan, image_size: int) -> int:
    """The JPEG DCT scale (1, 2, 4 or 8) that decodes the crop still at least ``image_size`` px a side."""
    shrink = min(plan.height, plan.width) / image_size
    return min(8, 2 ** int(math.log2(shrink))) if shrink >= 2 else 1


def _drafted_sample(data: bytes | torch.Tensor, name: str, transform: TrainTransform) -> torch.Tensor | None:
    """The training sample decoded at the smallest DCT scale (1/2, 1/4, 1/8: libjpeg's, through PIL's draft)
    that still gives its crop the output size; the crop drawn from the header first, as the CPU path draws it from
    the decoded image. None when the file is not a JPEG (nothing drawn then)."""
    try:
        with Image.open(io.BytesIO(_as_bytes(data))) as img:
            if img.format != "JPEG":
                return None
            width, height = img.size
            plan = transform.plan(height, width)
            factor = draft_factor(plan, transform.image_size)
            if factor == 1:
                image = None  # decoded in full below, by the same decoder as the CPU path
            else:
                img.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
                image = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    except Exception as e:  # noqa: BLE001 - as decode_rgb: any failure means "bad file"
        raise BadImageError(name, first_line(e)) from e
    if image is None:
        image = decode_rgb(data, name)
    else:
        plan = plan.scaled((height, width), (image.shape[-2], image.shape[-1]))
    return transform.augment(transform.apply(image, plan))


def _decode_and_transform(
    data: bytes | torch.Tensor, name: str, transform: SampleTransform, draft: bool
) -> torch.Tensor:
    """The CPU way, under the sample's seed (with ``draft``, training JPEGs at a reduced DCT scale)."""
    if draft and isinstance(transform, TrainTransform):
        sample = _drafted_sample(data, name, transform)
        if sample is not None:
            return sample
    return transform(decode_rgb(data, name))


def _leave_encoded(
    data: bytes | torch.Tensor, name: str, transform: SampleTransform, seed: int | None
) -> EncodedImage | DecodedHere:
    header = read_header(data, name)
    if header.not_for_device is not None:
        return DecodedHere(_decode_and_transform(data, name, transform, False), name, header.not_for_device)
    encoded = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    plan = transform.plan(header.height, header.width)
    return EncodedImage(encoded, name, header.height, header.width, plan, seed)


def prepare_sample(
    data: bytes | torch.Tensor,
    name: str,
    transform: SampleTransform | None,
    seed: int | None,
    decode: Decode = "cpu",
    draft: bool = False,
) -> torch.Tensor | EncodedImage | DecodedHere:
    """One sample from its file's bytes: a transformed uint8 image (``cpu``), or (``device``) the bytes with the
    crop drawn, or the image decoded here when the device decoder is not given that file.

    The sample's draws come from the CPU generator seeded by ``seed`` (None: unseeded), in the same order both
    ways: crop box, flip, then RandAugment and jitter. Raises BadImageError naming ``name`` for a bad file.
    """
    if transform is None:
        return decode_rgb(data, name)
    if decode == "device":
        work, args = _leave_encoded, (data, name, transform, seed)
    else:
        work, args = _decode_and_transform, (data, name, transform, draft)
    return work(*args) if seed is None else seeded(seed, work, *args)
