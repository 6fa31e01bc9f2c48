"""Helpers and independent expectations shared by the test modules."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).parents[1]
# Byte-for-byte copies of the team's cited reference files, committed so that a fresh clone runs every test.
REFERENCE_DIR = REPO_ROOT / "tests" / "reference"
# The team's read-only originals, beside the repository checkout where there is one (test_reference_data).
SHARED_REFERENCE_DIR = REPO_ROOT / ".." / "shared" / "reference"
REFERENCE_FILES = ("official_checkpoint_layout.json", "published_results.md")

# The zoo as the issue specifies it: SC model -> the timm model it is an A/B partner of. Written out here
# rather than read from scnet, so a name dropped from the zoo fails the tests.
EXPECTED_BASELINES = {
    "scnet50": "resnet50",
    "scnet101": "resnet101",
    "scnet50_v1d": "resnet50d",
    "scnet101_v1d": "resnet101d",
    "sc_resnext50_32x4d": "resnext50_32x4d",
    "sc_resnext101_32x4d": "resnext101_32x4d",
    "sc_seresnet50": "seresnet50",
    "sc_seresnet101": "seresnet101",
}
RELEASED = ("scnet50", "scnet50_v1d", "scnet101", "scnet101_v1d")  # names with a published layout
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def has_module(name: str) -> bool:
    """Whether the top-level package ``name`` is installed (found, not imported: a broken install counts)."""
    return importlib.util.find_spec(name) is not None


def require_extra(extra: str, *modules: str) -> None:
    """Skip the calling test, with the install line, when a package of an optional extra is not installed.

    Only a missing package skips: an installed one that fails to import fails the test, as it would fail
    the user (``pytest.importorskip`` would hide that, and hide an import error of scnet's own modules).
    """
    missing = [m for m in modules if not has_module(m)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (the {extra} extra): pip install 'scnet-pytorch[{extra}]'")


def is_deep(name: str) -> bool:
    """101-layer models: the slow ones."""
    return "101" in name


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight and BN buffer a distinct random value, in place.

    A fresh model has identical BN affine params and stats everywhere (ones/zeros), so swapped or skipped
    BNs would go unnoticed; random ones make any wiring mistake change the output. Scales keep the
    activations of a 50-layer net in a sane range (He-style fan-in for weights, BN near identity).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():  # state_dict tensors share storage with the model's
        if not t.is_floating_point():
            continue  # num_batches_tracked
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            t.copy_(torch.empty_like(t).uniform_(0.5, 2.0, generator=gen))
        elif leaf == "running_mean" or leaf == "bias":
            t.copy_(torch.empty_like(t).normal_(0.0, 0.1, generator=gen))
        elif t.dim() == 1:  # BN gamma
            t.copy_(torch.empty_like(t).uniform_(0.5, 1.5, generator=gen))
        else:  # conv / linear weight
            fan_in = t[0].numel()
            t.copy_(torch.empty_like(t).normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen))
    return model


def read_stderr_until(proc, marker: bytes, timeout: float) -> bytes:
    """Read a running process's stderr until ``marker`` appears (or it ends, or ``timeout`` s pass); return it.

    Used to stop a real training process at a known point, e.g. after tqdm reports step 2 (``b"| 2/5"``).
    """
    import os
    import time

    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    return seen


def shallow_(model: nn.Module) -> nn.Module:
    """Keep, of a four-stage network (an SCNet or a timm ResNet), only the first two blocks of ``layer1`` and the
    first block of each later stage, in place: every kind of block the network has (the stride-1 block with a
    projection, the strided one with avd/avg-down, the plain repeated one), its stem and head, in 5 blocks
    instead of 16.

    For the graph checks whose cost grows with the number of blocks (dynamo tracing, AOTAutograd, export):
    blocks of one kind run the same code, so a graph break or a wrong kernel shows in the first of them.
    """
    model.layer1 = model.layer1[:2]
    for name in ("layer2", "layer3", "layer4"):
        setattr(model, name, getattr(model, name)[:1])
    return model
