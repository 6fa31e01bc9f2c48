"""Transforms: shapes, dtypes and value ranges; PCA lighting; device normalisation."""

from __future__ import annotations

import torch

from scnet.data.device import IMAGENET_MEAN, IMAGENET_STD, DeviceLoader, DevicePreprocess, build_mixup
from scnet.data.loader import Batch
from scnet.data.transforms import (
    IMAGENET_PCA_EIGVAL,
    IMAGENET_PCA_EIGVEC,
    eval_transform,
    pca_lighting_,
    train_transform,
)


def _image(h=375, w=500, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_train_transform_uint8_shape():
    tf = train_transform(224, color_jitter=0.4, randaugment=(2, 9))
    for seed in range(3):
        out = tf(_image(seed=seed))
        assert out.dtype == torch.uint8 and out.shape == (3, 224, 224)


def test_eval_transform_resize_then_center_crop():
    # A 1024x512 horizontal ramp (value = column // 4): Resize(256) halves it to 512x256, CenterCrop(224)
    # keeps columns 144..367 of that, i.e. original columns ~288..735, values ~72..184.
    ramp = (torch.arange(1024) // 4).to(torch.uint8).view(1, 1, 1024).expand(3, 512, 1024).contiguous()
    out = eval_transform(224)(ramp)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert abs(int(out[0, 100, 0]) - 72) <= 1
    assert abs(int(out[0, 100, 223]) - 184) <= 1


def test_pca_lighting_offsets_along_eigvecs():
    x = torch.full((2, 3, 4, 4), 0.5)
    out = pca_lighting_(x.clone(), 0.1, generator=torch.Generator().manual_seed(0))
    delta = (out - 0.5)[:, :, 0, 0]
    assert torch.allclose(delta, (out - 0.5)[:, :, 3, 3])  # same offset at every pixel
    # The offset lies in the span of the eigenvectors weighted by eigenvalues: recover alpha and check its scale.
    alpha = torch.linalg.solve(IMAGENET_PCA_EIGVEC, delta.T).T / IMAGENET_PCA_EIGVAL
    assert alpha.abs().max() < 1.0 and alpha.abs().max() > 0
    assert torch.equal(pca_lighting_(x.clone(), 0.0), x)


def test_device_preprocess_normalises():
    images = torch.tensor([[[[0]], [[128]], [[255]]]], dtype=torch.uint8)
    out = DevicePreprocess(torch.device("cpu"), channels_last=True)(images)
    want = torch.tensor([(v / 255 - m) / s for v, m, s in zip((0, 128, 255), IMAGENET_MEAN, IMAGENET_STD, strict=True)])
    torch.testing.assert_close(out.flatten(), want)
    batch = Batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([1, 2]), ["bad.JPEG"])
    ((x, y, replaced, *_),) = list(DeviceLoader([batch], torch.device("cpu")))
    assert x.dtype == torch.float32 and x.is_contiguous() and y.tolist() == [1, 2] and replaced == ["bad.JPEG"]


def test_random_erasing_and_mixup_on_device_batches():
    images = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    clean = DevicePreprocess(torch.device("cpu"))(images)
    torch.manual_seed(0)
    erased = DevicePreprocess(torch.device("cpu"), random_erasing=1.0)(images)
    assert erased.shape == clean.shape
    changed = (erased != clean).flatten(1).any(1)
    assert changed.all()  # probability 1: every image has an erased box
    assert not (erased != clean).flatten(1).all(1).any()  # ...that leaves some pixels alone

    assert build_mixup(0.0, 0.0, 0.1, 10) is None
    mix = build_mixup(0.8, 1.0, 0.1, num_classes=10)
    x, y = mix(clean.clone(), torch.tensor([0, 1, 2, 3]))
    assert y.shape == (4, 10) and torch.allclose(y.sum(1), torch.ones(4))
