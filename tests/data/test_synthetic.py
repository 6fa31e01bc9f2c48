"""The speed-run JPEG set: layout the readers accept, photo-like file sizes, determinism, refusals."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from scnet.data import synthetic
from scnet.data.loader import build_dataset


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.JPEG"))


def test_layout_sizes_and_manifest(tmp_path):
    out = tmp_path / "set"
    manifest = synthetic.make_synthetic(out, classes=2, per_class=3, val_per_class=1, workers=1)
    assert (out / "classes.txt").read_text().split() == ["class_0000", "class_0001"]
    assert json.loads((out / synthetic.MANIFEST).read_text()) == manifest
    assert manifest["files"] == 8 == len(_files(out))
    for path in out.rglob("*.JPEG"):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.size in ((500, 375), (375, 500))
    # Like an ImageNet photo at quality 90 (~110 kB), not like flat drawings (a few kB) or pure noise (~300 kB).
    assert 70 <= manifest["mean_kb"] <= 140
    train = build_dataset(out, "train")
    val = build_dataset(out, "val", classes=train.classes)
    assert (len(train), len(val), train.classes) == (6, 2, ["class_0000", "class_0001"])
    image, label, _ = train[0]
    assert image.shape[0] == 3 and label == 0


def test_same_bytes_whatever_the_worker_count(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    synthetic.make_synthetic(a, classes=1, per_class=3, val_per_class=1, workers=1)
    synthetic.make_synthetic(b, classes=1, per_class=3, val_per_class=1, workers=2)
    assert _files(a) == _files(b)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in _files(a))
    # Another seed draws other pixels.
    assert synthetic.synthetic_jpeg(0, "train", 0, 0, (64, 48), 90) != synthetic.synthetic_jpeg(
        1, "train", 0, 0, (64, 48), 90
    )


def test_refusals(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="not an empty folder"):
        synthetic.make_synthetic(tmp_path / "full", classes=1, per_class=1, val_per_class=1)
    counts = "classes, per-class and val-per-class must be at least 1"
    bad_values = [
        (dict(classes=0), counts),
        (dict(per_class=0), counts),
        (dict(quality=0), "quality must be in 1-100, got 0"),
        (dict(workers=0), "workers must be at least 1, got 0"),
        (dict(size=(0, 10)), "size must be positive, got 0x10"),
    ]
    for bad, message in bad_values:
        with pytest.raises(ValueError, match=re.escape(message)):
            synthetic.make_synthetic(tmp_path / "new", **{"classes": 1, "per_class": 1, "val_per_class": 1, **bad})
    assert not (tmp_path / "new").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "set"
    argv = ["--out", str(out), "--classes", "1", "--per-class", "1", "--val-per-class", "1", "--size", "64x48"]
    assert synthetic.main(argv + ["--workers", "1", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == 2
    assert json.loads((tmp_path / "m.json").read_text())["size"] == "64x48"
    assert synthetic.main(argv) == 2  # not empty any more
    assert "not an empty folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--out", str(tmp_path / "x"), "--size", "big"])
    assert exit_info.value.code == 2 and "--size" in capsys.readouterr().err
