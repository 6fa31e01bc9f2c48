"""The procedurally drawn demo set: layout, sizes, determinism, resumption, and the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scnet.cli.data import main
from scnet.data.demo import CLASSES, make_demo

FOLDERS = [f"{i:02d}_{name}" for i, name in enumerate(CLASSES)]  # written out: the names users see


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.JPEG"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo") / "set", train_per_class=4, val_per_class=2, progress=False)


def test_tree_counts_and_classes(demo):
    assert (demo / "classes.txt").read_text().split() == FOLDERS
    assert FOLDERS == sorted(FOLDERS)  # class order = sorted folder order, as ImageFolder numbers them
    for split, n in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (demo / split).iterdir()) == FOLDERS
        for folder in FOLDERS:
            assert len(list((demo / split / folder).iterdir())) == n
    manifest = json.loads((demo / "demo.json").read_text())
    assert manifest["train_per_class"] == 4 and manifest["val_per_class"] == 2 and manifest["seed"] == 0
    assert not list(demo.rglob(".*"))  # no temp files left behind


def test_images_are_imagenet_like_jpegs(demo):
    sizes = set()
    for path in files_of(demo):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            w, h = img.size
            pixels = np.asarray(img)
        assert 300 <= w <= 500 and 300 <= h <= 500, path
        assert 3 / 4 <= w / h <= 4 / 3, path
        assert pixels.std() > 20, path  # something is drawn, not a flat plane
        sizes.add((w, h))
    assert len(sizes) > 40  # sizes vary from image to image


def test_mean_colour_does_not_give_the_class(tmp_path):
    """Colours are random per image: a nearest-centroid classifier on mean RGB must be near chance (10%)."""
    root = make_demo(tmp_path / "d", train_per_class=12, val_per_class=6, seed=3, progress=False)

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = [], []
        for label, folder in enumerate(FOLDERS):
            for path in sorted((root / split / folder).iterdir()):
                with Image.open(path) as img:
                    x.append(np.asarray(img.reduce(8), dtype=np.float64).mean(axis=(0, 1)))
                y.append(label)
        return np.array(x), np.array(y)

    x_train, y_train = features("train")
    x_val, y_val = features("val")
    centroids = np.stack([x_train[y_train == c].mean(0) for c in range(len(FOLDERS))])
    predicted = np.argmin(((x_val[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == y_val).mean()
    # Chance is 0.10 (sd ~0.04 over 60 images); a colour-coded class set would score near 1.
    assert accuracy < 0.3, accuracy


def test_same_seed_same_bytes_other_seed_other_bytes(demo, tmp_path):
    again = make_demo(tmp_path / "again", train_per_class=2, val_per_class=1, progress=False)
    for path in files_of(again):
        assert path.read_bytes() == (demo / path.relative_to(again)).read_bytes()  # growing a set keeps its images
    other = make_demo(tmp_path / "other", train_per_class=2, val_per_class=1, seed=1, progress=False)
    a, b = files_of(again), files_of(other)
    assert len(a) == len(b) == 30
    assert all(x.read_bytes() != y.read_bytes() for x, y in zip(a, b, strict=True))


def test_second_call_rewrites_nothing(demo):
    before = {p: p.stat().st_mtime_ns for p in files_of(demo)}
    assert make_demo(demo, train_per_class=4, val_per_class=2, progress=False) == demo
    assert {p: p.stat().st_mtime_ns for p in files_of(demo)} == before


def test_interrupted_run_resumes_and_other_parameters_reshape(demo, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(demo, root)
    victim = files_of(root)[5]
    original = victim.read_bytes()
    victim.unlink()
    (root / "demo.json").unlink()  # as if killed before the end
    stray = victim.with_name(f".{victim.name}.12345.tmp")
    stray.write_bytes(original[:100])  # a dead run's half-written temp file
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    kept = files_of(root)[0]
    kept_mtime = kept.stat().st_mtime_ns

    make_demo(root, train_per_class=4, val_per_class=2, progress=False)
    assert victim.read_bytes() == original
    assert not stray.exists()
    assert kept.stat().st_mtime_ns == kept_mtime  # complete files are not redrawn
    assert json.loads((root / "demo.json").read_text())["train_per_class"] == 4

    # Fewer classes and images: the extra files go, so an ImageFolder reader sees exactly the new set.
    make_demo(root, num_classes=3, train_per_class=2, val_per_class=1, progress=False)
    assert sorted(p.name for p in (root / "train").iterdir()) == FOLDERS[:3]
    assert len(files_of(root / "train")) == 6 and len(files_of(root / "val")) == 3
    assert (root / "classes.txt").read_text().split() == FOLDERS[:3]


def test_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="num_classes"):
        make_demo(tmp_path, num_classes=len(CLASSES) + 1, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        make_demo(tmp_path, val_per_class=0, progress=False)


def scnet_data() -> list[str]:
    """The installed console script when there is one, else the module (same entry point)."""
    script = Path(sys.executable).with_name("scnet-data")
    return [str(script)] if script.exists() else [sys.executable, "-m", "scnet.cli.data"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([*scnet_data(), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_cli_demo(tmp_path):
    out = tmp_path / "cli"
    proc = run_cli("demo", "--out", str(out), "--train-per-class", "3", "--val-per-class", "2")
    assert proc.returncode == 0, proc.stderr
    assert "demo dataset ready" in proc.stdout and str(out) in proc.stdout
    assert "demo images" in proc.stderr  # the progress bar goes to stderr, never into stdout
    assert len(files_of(out / "train")) == 30 and len(files_of(out / "val")) == 20


def test_cli_demo_bad_input_is_one_line(tmp_path, capsys):
    # In-process (each subprocess pays seconds of torch import): the same main() the script runs.
    assert main(["demo", "--out", str(tmp_path / "x"), "--classes", "11", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scnet-data demo: error:") and err.count("\n") == 1
