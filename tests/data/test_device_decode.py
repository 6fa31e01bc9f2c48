"""data.decode=gpu without a GPU: the workers leave JPEGs encoded with their crops drawn, the device side decodes
and cuts them (torchvision's CPU decoder standing in for nvjpeg). Its batches must be the CPU path's, pixel for
pixel: same crops, flips, labels and order, the same again from the middle of an epoch; the files the device
decoder is not given are decoded in the workers and named; a file nothing decodes is left out and named."""

from __future__ import annotations

import pytest
import torch
from torchvision.io import decode_jpeg

from scnet.data.device import DevicePreprocess
from scnet.data.device_decode import DeviceDecoder
from scnet.data.loader import build_dataset, build_eval_loader, build_loader
from scnet.data.sample import Header, draft_factor, prepare_sample, read_header
from scnet.data.shards import make_shards
from scnet.data.transforms import CropPlan, eval_transform, train_transform

from .images import encode, random_image

CPU = torch.device("cpu")
# The files nvjpeg is not given, and why (the reason each is named with).
ODD = {
    "a/gray.JPEG": "greyscale JPEG",
    "b/cmyk.JPEG": "CMYK JPEG",
    "b/progressive.JPEG": "progressive JPEG",
    "c/png_named.JPEG": "PNG file",
}


def _tree(root, corrupt: bool = False):
    """root/train and root/val: baseline JPEGs of several sizes (one with restart markers), the files of ODD,
    and a JPEG cut short (a bad file both paths replace); ``corrupt``: also one whose header and end marker are
    fine but whose data no decoder reads (the device path's worker cannot tell)."""
    sizes = [(160, 120), (90, 130), (200, 100), (120, 120)]
    for split in ("train", "val"):
        for c, cls in enumerate("abc"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i, (w, h) in enumerate(sizes):
                (folder / f"{i}.JPEG").write_bytes(encode(random_image(w, h, seed=c * 10 + i), quality=90))
        img = random_image(150, 110, seed=99)
        (root / split / "a/gray.JPEG").write_bytes(encode(img.convert("L"), quality=90))
        (root / split / "a/restarts.JPEG").write_bytes(encode(img, quality=90, restart_marker_blocks=2))
        (root / split / "b/cmyk.JPEG").write_bytes(encode(img.convert("CMYK"), quality=90))
        (root / split / "b/progressive.JPEG").write_bytes(encode(img, quality=90, progressive=True))
        (root / split / "c/png_named.JPEG").write_bytes(encode(img, "PNG"))
        whole = encode(random_image(140, 100, seed=7), quality=90)
        (root / split / "c/truncated.JPEG").write_bytes(whole[: len(whole) * 2 // 3])
        if corrupt:
            broken = bytearray(whole)
            broken[len(whole) // 2 : len(whole) // 2 + 40] = b"\xff\xc8" * 20  # a frame marker inside the scan
            (root / split / "c/corrupt.JPEG").write_bytes(bytes(broken))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return _tree(tmp_path_factory.mktemp("device_decode"))


def _batches(root, decode, transform, epoch=0, start=0, split="train", decoder_fn=None, workers=0):
    """Every batch of an epoch (from sample ``start``) as the trainer gets it (DevicePreprocess.batch), 3 a batch."""
    ds = build_dataset(root, split, transform, seed=3, shuffle=True, decode=decode)
    decoder = DeviceDecoder(transform, CPU, decoder_fn) if decode == "device" else None
    pre = DevicePreprocess(CPU, decoder=decoder)
    loader = build_loader(ds, 3, workers, train=True, seed=3, pin_memory=False, persistent=False)  # 18 files: all
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch, start=start)
    else:
        ds.set_epoch(epoch)
    return [pre.batch(b) for b in loader]


def _assert_same(cpu, device):
    assert len(cpu) == len(device)
    for a, b in zip(cpu, device, strict=True):
        assert torch.equal(a.labels, b.labels)
        assert torch.equal(a.images, b.images)
        assert a.replaced == b.replaced


RECIPES = {
    "crop+flip": dict(image_size=64, scale=(0.2, 1.0)),
    "randaugment+jitter": dict(image_size=64, scale=(0.2, 1.0), color_jitter=0.4, randaugment=(2, 9)),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_device_batches_equal_the_cpu_paths_pixel_for_pixel(tree, recipe):
    transform = train_transform(**RECIPES[recipe])
    for epoch in (0, 1):
        cpu = _batches(tree, "cpu", transform, epoch)
        device = _batches(tree, "device", transform, epoch)
        _assert_same(cpu, device)
        assert any(b.replaced for b in cpu)  # the truncated file, replaced alike
        here = sorted(name for b in device for name in b.decoded_on_cpu)
        want = sorted(f"{tree / 'train' / path} ({why})" for path, why in ODD.items())
        assert here == want and not any(b.decoded_on_cpu for b in cpu)


def test_from_the_middle_of_an_epoch_the_same_batches(tree):
    transform = train_transform(64, scale=(0.2, 1.0))
    whole = _batches(tree, "device", transform, epoch=1)
    tail = _batches(tree, "device", transform, epoch=1, start=6)
    _assert_same(whole[2:], tail)  # 3 a batch
    # ...and the workers' processes draw what the main process would (the crops are planned there).
    _assert_same(whole, _batches(tree, "device", transform, epoch=1, workers=2))


def test_evaluation_and_shards_take_the_device_path_alike(tree, tmp_path):
    transform = eval_transform(56, 0.875)
    for decode in ("cpu", "device"):
        ds = build_dataset(tree, "val", transform, bad_images="skip", decode=decode)
        pre = DevicePreprocess(CPU, decoder=DeviceDecoder(transform, CPU) if decode == "device" else None)
        got = [pre.batch(b) for b, _ in build_eval_loader(ds, 4, 0, pin_memory=False)]
        if decode == "cpu":
            want = got
    _assert_same(want, got)
    make_shards(tree, tmp_path / "shards", shard_size=5, progress=False)
    train = train_transform(64, scale=(0.2, 1.0))
    _assert_same(_batches(tmp_path / "shards", "cpu", train), _batches(tmp_path / "shards", "device", train))


def test_a_file_no_decoder_reads_is_left_out_and_named(tmp_path):
    root = _tree(tmp_path, corrupt=True)
    transform = eval_transform(56, 0.875)
    ds = build_dataset(root, "val", transform, bad_images="skip", decode="device")
    pre = DevicePreprocess(CPU, decoder=DeviceDecoder(transform, CPU))
    out = [pre.batch(b) for b, _ in build_eval_loader(ds, 4, 0, pin_memory=False)]
    broken = [name for b in out for name in b.broken]
    assert broken == [str(root / "val/c/corrupt.JPEG")]
    (hit,) = [b for b in out if b.broken]
    assert hit.images.shape[0] == hit.labels.shape[0] == hit.delivered - 1
    # Nothing stands in for it: every other file of the split is there once.
    assert sum(b.images.shape[0] for b in out) == len(ds) - 2  # the truncated file is skipped by the worker


def _refuses_restart_markers(data, mode, device):
    """A device decoder that refuses JPEGs with restart intervals (DRI marker), as some nvjpeg backends do."""
    items = data if isinstance(data, list) else [data]
    if any(b"\xff\xdd" in bytes(t.numpy()) for t in items):
        raise RuntimeError("nvjpeg: unsupported")
    return decode_jpeg(data, mode=mode, device=device)


def test_a_file_the_device_decoder_refuses_is_decoded_on_the_cpu(tree):
    transform = train_transform(64, scale=(0.2, 1.0))
    cpu = _batches(tree, "cpu", transform)
    device = _batches(tree, "device", transform, decoder_fn=_refuses_restart_markers)
    _assert_same(cpu, device)
    refused = [name for b in device for name in b.decoded_on_cpu if "refused" in name]
    assert refused == [f"{tree / 'train/a/restarts.JPEG'} (refused by the device decoder)"]


def test_header_reading(tree):
    root = tree / "train"
    assert read_header((root / "a/0.JPEG").read_bytes(), "a") == Header(120, 160, None)
    assert read_header((root / "a/restarts.JPEG").read_bytes(), "r").not_for_device is None
    for path, why in ODD.items():
        assert read_header((root / path).read_bytes(), path).not_for_device == why
    with pytest.raises(ValueError, match=r"truncated.JPEG: cannot decode image \(JPEG truncated"):
        read_header((root / "c/truncated.JPEG").read_bytes(), "truncated.JPEG")
    with pytest.raises(ValueError, match="x.JPEG: cannot decode image"):
        read_header(b"not an image at all", "x.JPEG")


def test_jpeg_draft_decodes_large_crops_smaller_with_the_same_draws(tmp_path):
    assert [draft_factor(CropPlan(0, 0, h, h, False), 64) for h in (64, 127, 128, 255, 256, 600)] == [1, 1, 2, 2, 4, 8]
    # A box scaled to the decoded size stays inside it (libjpeg rounds the scaled sides up).
    assert CropPlan(1, 2, 599, 797, True).scaled((600, 799), (150, 200)) == CropPlan(0, 0, 150, 199, True)
    assert CropPlan(598, 796, 2, 3, False).scaled((600, 799), (75, 100)) == CropPlan(74, 99, 1, 1, False)
    # A smooth 800x600 image (noise would not survive any downscale): draft and full decode agree closely.
    y, x = torch.meshgrid(torch.linspace(0, 1, 600), torch.linspace(0, 1, 800), indexing="ij")
    rgb = torch.stack([x, y, (x + y) / 2]).mul(255).to(torch.uint8)
    from torchvision.io import encode_jpeg

    data = encode_jpeg(rgb, quality=95)
    transform = train_transform(64, scale=(0.5, 1.0))
    for seed in range(4):
        full = prepare_sample(data, "big", transform, seed, draft=False)
        small = prepare_sample(data, "big", transform, seed, draft=True)
        assert full.shape == small.shape == (3, 64, 64)
        assert not torch.equal(full, small)  # decoded at a reduced scale...
        assert (full.float() - small.float()).abs().mean() < 3  # ...of the same box, flipped alike
    # A crop that is not twice the output is decoded in full: the very same pixels.
    near = train_transform(400, scale=(0.5, 1.0))
    assert torch.equal(prepare_sample(data, "big", near, 0, draft=True), prepare_sample(data, "big", near, 0))


def test_where_a_run_decodes_and_the_line_that_says_so():
    from scnet.config import load_config
    from scnet.runtime.distributed import DistInfo
    from scnet.train.setup import RunError, resolve_decode

    def resolve(decode: str, device: str) -> tuple[str, str]:
        return resolve_decode(load_config(None, [f"data.decode={decode}"]), DistInfo(0, 1, 0, torch.device(device)))

    assert resolve("auto", "cpu") == resolve("cpu", "cpu") == resolve("cpu", "cuda") == ("cpu", "")
    assert resolve("gpu", "cpu") == (
        "gpu",
        "data.decode=gpu on cpu: the device-decoding path with the CPU decoder standing in",
    )
    if torch.cuda.is_available():
        return  # below: a CUDA device whose torchvision cannot decode there (here: no CUDA at all)
    where, line = resolve("auto", "cuda")
    assert where == "cpu" and line.startswith("data.decode=auto: cpu (torchvision cannot decode JPEG on cuda")
    with pytest.raises(RunError, match=r"^data.decode=gpu: torchvision cannot decode JPEG on cuda .*; data.decode=cpu"):
        resolve("gpu", "cuda")
