"""Data shared by the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from scnet.data.demo import make_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A tiny demo set (10 classes, 2 train / 1 val image each), one per test module."""
    root = tmp_path_factory.mktemp("demo")
    return make_demo(root, num_classes=10, train_per_class=2, val_per_class=1, progress=False)
