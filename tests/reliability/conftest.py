"""The demo data and the uninterrupted reference run that every fault-injection test compares against."""

from __future__ import annotations

from pathlib import Path

import pytest

from scnet.data.demo import make_demo

from .harness import run, train_command


@pytest.fixture(scope="module")
def demo(module_tmp) -> Path:
    """10 classes, 2 train / 1 val image each."""
    return make_demo(module_tmp / "demo", num_classes=10, train_per_class=2, val_per_class=1, progress=False)


@pytest.fixture(scope="module")
def reference(demo, module_tmp) -> Path:
    """The same run as the tests', never interrupted: its final weights and metrics are what every trial must
    end with."""
    out = module_tmp / "reference"
    result = run(train_command(demo, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out
