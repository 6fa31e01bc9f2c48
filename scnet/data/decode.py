"""Turning image files into uint8 RGB tensors, robust to ImageNet's known bad files.

ImageNet's train set holds CMYK JPEGs, a PNG saved as ``.JPEG``, grayscale images, and every
crawl has truncated or corrupt files. Each decodes to a 3xHxW uint8 tensor here, or raises
:class:`BadImageError` naming the file, never an anonymous library error.
"""

from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from ..runtime.messages import first_line

ImageSource = bytes | str | os.PathLike


class BadImageError(ValueError):
    """A file that cannot be decoded into an image; ``name`` is the file, ``reason`` the cause."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: cannot decode image ({reason})")
        self.name = name
        self.reason = reason


def decode_rgb(data: bytes | torch.Tensor, name: str = "<bytes>") -> torch.Tensor:
    """Decode JPEG/PNG/... bytes into a 3xHxW uint8 RGB tensor.

    libjpeg-turbo/libpng through torchvision first (fast, and it converts grayscale and CMYK to
    RGB); PIL for anything torchvision rejects. A file truncated before its end marker is bad:
    its bottom rows would be grey filler, not image.
    """
    if len(data) == 0:
        raise BadImageError(name, "empty file")
    encoded = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        image = decode_image(encoded, mode=ImageReadMode.RGB)
        if image.ndim == 4:  # animated GIF: the first frame
            image = image[0]
        if image.dtype != torch.uint8:  # 16-bit PNG
            image = to_dtype(image, torch.uint8, scale=True)
        return image
    except RuntimeError:
        pass  # fall through to PIL, which knows more formats and gives clearer reasons
    try:
        with Image.open(io.BytesIO(encoded.numpy().tobytes())) as img:
            img = img.convert("RGB")
            arr = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
            return arr.view(img.height, img.width, 3).permute(2, 0, 1).contiguous()
    except UnidentifiedImageError as e:
        raise BadImageError(name, "not a recognised image format") from e
    except Exception as e:  # noqa: BLE001 - PIL raises many types; each means "bad file"
        raise BadImageError(name, first_line(e)) from e


def read_file(path: str | os.PathLike) -> torch.Tensor:
    """A file's bytes as a 1-D uint8 tensor (read straight into its memory: no intermediate copy);
    BadImageError naming it when it cannot be read."""
    try:
        return torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    except OSError as e:
        raise BadImageError(str(path), e.strerror or str(e)) from e


def load_rgb(source: ImageSource, name: str | None = None) -> torch.Tensor:
    """Read and decode a file (or bytes) into a 3xHxW uint8 RGB tensor; see :func:`decode_rgb`."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    data = source if isinstance(source, bytes) else read_file(source)
    return decode_rgb(data, label)
