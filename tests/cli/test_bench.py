"""`scnet-bench data` as a real process on a tiny ImageFolder tree."""

from __future__ import annotations

import json
import subprocess
import sys

from ..data.images import make_tree


def test_bench_data_json(tmp_path):
    make_tree(tmp_path / "train", {"a": 6, "b": 6}, size=(160, 120))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "scnet.cli.bench", "data", "--data", str(tmp_path), "--workers", "1"]
    cmd += ["--batches", "2", "--batch-size", "4", "--warmup", "1", "--repeats", "1", "--image-size", "64"]
    proc = subprocess.run(cmd + ["--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result == json.loads(proc.stdout)
    # The settings it ran with, and the split it read (a root's train/ when there is one).
    assert (result["workers"], result["batches"], result["batch_size"], result["image_size"]) == (1, 2, 4, 64)
    assert result["data"] == str(tmp_path / "train")
    assert result["images_per_second"] > 0 and result["baseline_images_per_second"] > 0


def test_bench_data_missing_folder_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "scnet.cli.bench", "data", "--data", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr
