"""Decoding every kind of file ImageNet is known to hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scnet.data.decode import BadImageError, decode_rgb, load_rgb

from .images import encode, random_image

IMG = random_image(80, 60, seed=1)


def _pil_rgb(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize(
    "kind,data,source",
    [
        ("rgb", encode(IMG, quality=90), IMG),
        ("cmyk", encode(IMG.convert("CMYK"), quality=90), IMG.convert("CMYK")),
        ("grayscale", encode(IMG.convert("L"), quality=90), IMG.convert("L")),
        ("png_named_jpeg", encode(IMG, "PNG"), IMG),
    ],
)
def test_good_files_decode_to_rgb(kind, data, source):
    got = decode_rgb(data, kind)
    assert got.dtype == torch.uint8 and got.shape == (3, 60, 80)
    if kind == "png_named_jpeg":
        torch.testing.assert_close(got, _pil_rgb(source), rtol=0, atol=0)  # lossless
    else:
        # Same pixels as PIL's own decode of the file (both use libjpeg); allow rounding of colour conversion.
        import io

        want = _pil_rgb(Image.open(io.BytesIO(data)))
        assert (got.int() - want.int()).abs().max() <= 2
    if kind == "grayscale":
        assert torch.equal(got[0], got[1]) and torch.equal(got[1], got[2])


@pytest.mark.parametrize(
    "kind,data",
    [
        ("truncated", encode(IMG, quality=90)[:700]),
        ("corrupt", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2),
        ("empty", b""),
        ("not_an_image", b"<html>404</html>"),
    ],
)
def test_bad_files_raise_one_clear_error(kind, data):
    with pytest.raises(BadImageError) as info:
        decode_rgb(data, f"n01440764/{kind}.JPEG")
    msg = str(info.value)
    assert msg.startswith(f"n01440764/{kind}.JPEG: cannot decode image")
    assert "\n" not in msg and "0x" not in msg  # one line, no object addresses


def test_missing_file_is_a_bad_image(tmp_path):
    with pytest.raises(BadImageError, match="gone.JPEG"):
        load_rgb(tmp_path / "gone.JPEG")


def test_16bit_png_and_animated_gif_become_uint8_rgb():
    import io

    ramp = np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (8, 1))  # 8x64, 16-bit grey
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    got = decode_rgb(buf.getvalue(), "deep.png")
    assert got.dtype == torch.uint8 and got.shape == (3, 8, 64)
    assert int(got[0, 0, -1]) >= 250 and int(got[0, 0, 0]) == 0  # scaled, not truncated

    frames = [random_image(20, 10, seed=s).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    got = decode_rgb(buf.getvalue(), "anim.gif")
    assert got.shape == (3, 10, 20) and got.dtype == torch.uint8
