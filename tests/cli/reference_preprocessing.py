"""An answer for scnet-predict and scnet-eval that owes nothing to scnet's preprocessing.

The crop a checkpoint should see is computed here as timm and the original release evaluate: torchvision's
v1 transforms on a PIL image (``Resize(int(size / crop_pct))`` with PIL's filter, ``CenterCrop``, ``ToTensor``,
``Normalize`` with ImageNet's mean and std), the file read by PIL.

The checkpoint is a *probe*: a scnet50 state_dict whose weights make the network compute a small formula,
:func:`probe_logits`, so that the expected logits come from that formula, not from scnet's model either. Its
features are averages over the whole crop of per-pixel colour measures: each channel's value; its excess over
and shortfall from the levels 64, 128 and 192; its excess over 222 and shortfall from 33, levels that only
bicubic's overshoot reaches in the block pictures; the differences between channels. Hence, with the
pictures below:

- normalisation: a missing, swapped or reordered mean/std moves every feature (the levels are in normalised
  units), by far more than any tolerance;
- the crop region: the scenes put different colours at the edges, in two corners and at the centre, so the
  share of each colour in the crop depends on where the crop is taken and on how much of the picture it keeps
  (crop_pct, image size, resizing the short side);
- the filter: enlarging a small picture of flat blocks, nearest makes no new values, bilinear ramps, bicubic
  steeper ramps that overshoot; shrinking the scenes' 1-px stripes, only an antialiased resize averages them.

The head is a fixed random projection of the features (:data:`NUM_CLASSES` classes; the seed picks the head,
so that ``model`` and ``model_ema`` can disagree), centred on a mid-grey crop so that the logits move with the
picture rather than with what every picture shares.

Tolerance. PIL and torchvision's antialiased uint8 resize (scnet's path) do not round alike: on these pictures,
bilinear and bicubic differ by one level on up to a few % of the pixels (mean difference <= 0.02 levels) and by
two on a handful (bicubic). A level is 0.0175 in normalised units and every layer of the probe is 1-Lipschitz in
the largest pixel change, but the features average over the crop, where differences of both signs mostly cancel:
measured, the logits move by at most 0.0031 over every picture, setting and head used here. :data:`LOGIT_TOL`
is three times that. Log-probabilities must agree within ``2 * LOGIT_TOL`` (a log-softmax moves by at most twice
the largest logit change), and where the reference's own log-probabilities are closer than that, rounding may
order the classes either way. The preprocessing mistakes tried against these tests move log-probabilities by
0.03 (a resize one pixel larger: round instead of floor) to several units.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

import scnet

from ..utils import IMAGENET_MEAN, IMAGENET_STD

PIL_FILTERS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
NUM_CLASSES = 16
CLASSES = [f"class{i:02d}" for i in range(NUM_CLASSES)]
LOGIT_TOL = 0.01  # the largest logit change allowed to resize rounding (see above)
_HEAD_GAIN = 6.0  # logits a few units apart across the test pictures: probabilities neither flat nor saturated
_BN_EPS = 1e-5  # BatchNorm2d's default: a running_var of 1 - eps makes a BN with unit gamma an exact identity


# ----------------------------------------------------------------------------------------------- reference


def reference_input(path: str | Path, image_size: int, crop_pct: float, interpolation: str) -> torch.Tensor:
    """The normalised (3, image_size, image_size) crop that a checkpoint evaluated at these settings sees."""
    transform = T.Compose(
        [
            T.Resize(int(image_size / crop_pct), interpolation=PIL_FILTERS[interpolation]),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    with Image.open(path) as img:
        return transform(img.convert("RGB"))


# ----------------------------------------------------------------------------------------------- the probe


def _level(value: int, channel: int) -> float:
    """A uint8 level of one channel, in normalised units."""
    return (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]


def _feature_rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-pixel features ``relu(u . x + b)``: directions u (F, 3), offsets b (F,), head gains (F,)."""
    rows: list[tuple[list[float], float, float]] = []

    def channel(c: int, sign: float = 1.0) -> list[float]:
        return [sign * (i == c) for i in range(3)]

    for c in range(3):
        rows.append((channel(c), 3.0, 1.0))  # the value itself: +3 keeps it above 0 (normalised >= -2.2)
    for c in range(3):
        for level in (64, 128, 192):
            rows.append((channel(c), -_level(level, c), 1.0))  # above the level
            rows.append((channel(c, -1.0), _level(level, c), 1.0))  # below it
    for c in range(3):
        # Overshoot covers a few % of a crop at most: weighted up, so that it shows in the ranking.
        rows.append((channel(c), -_level(222, c), 5.0))
        rows.append((channel(c, -1.0), _level(33, c), 5.0))
    for a, b in ((0, 1), (1, 2), (2, 0)):
        rows.append(([float(i == a) - float(i == b) for i in range(3)], 0.0, 1.0))
    directions, offsets, gains = zip(*rows, strict=True)
    return torch.tensor(directions), torch.tensor(offsets), torch.tensor(gains)


FEATURE_DIRECTIONS, FEATURE_OFFSETS, _FEATURE_GAINS = _feature_rows()
NUM_FEATURES = len(FEATURE_OFFSETS)  # at most 32: the width of the first stage's plain branch


def probe_features(x: torch.Tensor) -> torch.Tensor:
    """(N, F) features of normalised crops (N, 3, H, W), H and W even: what the probe's layers compute.

    Stem: the 2x2 average of the pixels (2i, 2i + 1) in both directions, then each feature's ReLU. Max pool
    3x3/2. Stages 2-4: a 2x2 average each (a map of odd size padded with zeros, as the strided 3x3 sees it).
    Global mean.
    """
    stem = torch.einsum("fc,nchw->nfhw", FEATURE_DIRECTIONS.to(x.dtype), F.avg_pool2d(x, 2))
    y = F.max_pool2d(F.relu(stem + FEATURE_OFFSETS.to(x.dtype)[:, None, None]), 3, 2, 1)
    for _ in range(3):
        y = F.avg_pool2d(F.pad(y, (0, y.shape[-1] % 2, 0, y.shape[-2] % 2)), 2)
    return y.mean(dim=(2, 3))


def probe_logits(x: torch.Tensor, state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """The probe checkpoint's logits (N, classes) for normalised crops, in float64: the formula, then the
    head read from ``state_dict``."""
    weight = state_dict["fc.weight"][:, :NUM_FEATURES].double()
    return probe_features(x.double()) @ weight.T + state_dict["fc.bias"].double()


def probe_head(seed: int) -> dict[str, torch.Tensor]:
    """``fc.weight`` and ``fc.bias`` of a probe: a random projection of the features, zero for a mid-grey crop."""
    weight = torch.randn(NUM_CLASSES, NUM_FEATURES, generator=torch.Generator().manual_seed(seed))
    weight *= _HEAD_GAIN / math.sqrt(NUM_FEATURES) * _FEATURE_GAINS
    grey = torch.tensor([_level(128, c) for c in range(3)]).view(1, 3, 1, 1).expand(1, 3, 112, 112)
    full = torch.zeros(NUM_CLASSES, 2048)  # scnet50's features: the probe's first, zeros after
    full[:, :NUM_FEATURES] = weight
    return {"fc.weight": full, "fc.bias": -(probe_features(grey) @ weight.T)[0]}


def probe_state_dict(head_seed: int) -> dict[str, torch.Tensor]:
    """A scnet50 state_dict (:data:`NUM_CLASSES` outputs) that computes :func:`probe_logits`.

    Every weight is zero and every BN an identity, except: the stem conv's 2x2 taps and bn1's offsets make the
    features; in each stage's first block the shortcut is off (zero downsample) and the plain branch passes
    the features (conv1_a and conv3 copy them) through k1, a centre tap in stage 1 and a 2x2 average at
    stride 2 in stages 2-4; the self-calibrated branch gets zeros and gives zeros; the other blocks' branches
    are zero, so those blocks pass their input on. The head is :func:`probe_head` (``head_seed``).
    """
    with torch.device("meta"):  # shapes only: no time spent initialising 25M weights
        model = scnet.create_model("scnet50", num_classes=NUM_CLASSES)
    sd = {key: torch.zeros(value.shape, dtype=value.dtype) for key, value in model.state_dict().items()}
    for key, value in sd.items():
        if key.endswith("running_var"):
            value.fill_(1 - _BN_EPS)
        elif value.dim() == 1 and key.endswith(".weight"):  # BN gamma
            value.fill_(1.0)
    n, same = NUM_FEATURES, torch.arange(NUM_FEATURES)
    sd["conv1.weight"][:n, :, 3:5, 3:5] = FEATURE_DIRECTIONS[:, :, None, None] / 4  # 7x7, padding 3: taps 3, 4
    sd["bn1.bias"][:n] = FEATURE_OFFSETS
    for stage in range(1, 5):
        block = f"layer{stage}.0."
        sd[block + "conv1_a.weight"][same, same] = 1.0
        if stage == 1:
            sd[block + "k1.0.weight"][same, same, 1, 1] = 1.0
        else:  # stride 2, padding 1: taps 1 and 2 read the inputs 2o and 2o + 1
            sd[block + "k1.0.weight"][same, same, 1:3, 1:3] = 0.25
        sd[block + "conv3.weight"][same, same] = 1.0
    return {**sd, **probe_head(head_seed)}


# ----------------------------------------------------------------------------------------------- pictures


def scene_image(width: int, height: int, seed: int) -> Image.Image:
    """Coloured regions whose share of a crop depends on where and how much is cropped, over a gradient:
    bands along the left and right edges, a block near the top-left corner, a disc near the bottom-right
    one, a bright disc at the centre; right of the centre, a patch of 1-px stripes (averaged away by a resize
    that shrinks the picture only if it is antialiased). ``seed`` picks the colours."""
    rng = np.random.default_rng(seed)
    w, h = width, height
    yy, xx = np.mgrid[0:h, 0:w]
    gradient = np.stack([60 + 120 * xx / w, 60 + 120 * yy / h, np.full(xx.shape, 100.0)], axis=-1)
    img = Image.fromarray(gradient.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for box, shape in (
        ([0, 0, w // 10, h], draw.rectangle),
        ([w - w // 10, 0, w, h], draw.rectangle),
        ([w // 8, h // 8, w // 3, h // 3], draw.rectangle),
        ([w * 5 // 8, h * 5 // 8, w * 7 // 8, h * 7 // 8], draw.ellipse),
    ):
        shape(box, fill=tuple(int(v) for v in rng.integers(20, 236, 3)))
    r = min(w, h) // 6
    draw.ellipse([w // 2 - r, h // 2 - r, w // 2 + r, h // 2 + r], fill=(240, 240, 235))
    pixels = np.array(img)
    patch = pixels[h // 2 - h // 4 : h // 2 + h // 4, w // 2 + w // 8 : w // 2 + w // 3]  # a view
    patch[..., 1] = np.where(np.arange(patch.shape[0])[:, None] % 2 == 0, 235, 20)  # 1-px rows
    patch[..., 0] = np.where(np.arange(patch.shape[1])[None, :] % 3 == 0, 210, 50)  # a column in three
    return Image.fromarray(pixels)


def block_image(width: int, height: int, seed: int) -> Image.Image:
    """A small picture of 1-px blocks at the levels 40, 128 and 215, in a mix of its own per channel
    (``seed``): enlarged, its edges become steps (nearest), ramps (bilinear) or ramps that overshoot (bicubic)."""
    rng = np.random.default_rng(seed)
    levels = np.array([40, 128, 215], dtype=np.uint8)
    shares = rng.dirichlet(np.ones(3), size=3)
    blocks = np.stack([rng.choice(3, (height, width), p=shares[c]) for c in range(3)], axis=-1)
    return Image.fromarray(levels[blocks])


# ----------------------------------------------------------------------------------------------- answers


def expected_log_probs(
    paths: list[Path], state_dict: dict[str, torch.Tensor], image_size: int, crop_pct: float, interpolation: str
) -> dict[str, torch.Tensor]:
    """Image path -> the probe's log-probabilities (float64) on the reference crop at these settings."""
    x = torch.stack([reference_input(p, image_size, crop_pct, interpolation) for p in paths])
    return {str(p): row for p, row in zip(paths, probe_logits(x, state_dict).log_softmax(dim=-1), strict=True)}


def top_indices(log_probs: torch.Tensor, k: int) -> list[int]:
    """The ``k`` most probable classes, best first."""
    return log_probs.topk(k).indices.tolist()


def check_answers(got: dict[str, list[tuple[int, float]]], expected: dict[str, torch.Tensor], k: int) -> None:
    """``got`` (image -> top (index, prob) pairs, best first) is ``expected``'s top-k: each rank holds the
    reference's class of that rank, or one whose log-probability is within ``2 * LOGIT_TOL`` of it (a tie
    that rounding may break either way), and each log-probability is within ``2 * LOGIT_TOL`` of the
    reference's."""
    assert list(got) == list(expected), "not the images expected, or not in their order"
    for image, log_probs in expected.items():
        want = top_indices(log_probs, k)
        classes = [i for i, _ in got[image]]
        tied = all(abs(log_probs[c] - log_probs[w]) <= 2 * LOGIT_TOL for c, w in zip(classes, want, strict=True))
        assert classes == want or tied, f"{image}: top-{k} {classes}, expected {want}"
        deviation = max(abs(math.log(p) - log_probs[i].item()) for i, p in got[image])
        assert deviation <= 2 * LOGIT_TOL, f"{image}: log-probabilities {deviation:.4f} away from the reference's"


def hits(log_probs: torch.Tensor, label: int) -> tuple[bool, bool]:
    """Whether ``label`` is the top-1 and whether it is in the top-5 of ``log_probs``, each decided by more
    than ``2 * LOGIT_TOL`` (else rounding could decide it, and the expected accuracy would be no answer)."""
    others = torch.cat([log_probs[:label], log_probs[label + 1 :]]).sort(descending=True).values
    margins = [(log_probs[label] - others[rank]).item() for rank in (0, 4)]
    assert all(abs(m) > 2 * LOGIT_TOL for m in margins), f"label {label} is a near tie: margins {margins}"
    return margins[0] > 0, margins[1] > 0
