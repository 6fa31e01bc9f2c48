"""`scnet-bench data` through its entry point on a tiny ImageFolder tree."""

from __future__ import annotations

import json

from scnet.cli.bench import main as bench_main

from ..data.images import make_tree


def test_bench_data_json(tmp_path, capsys):
    make_tree(tmp_path / "train", {"a": 6, "b": 6}, size=(160, 120))
    out = tmp_path / "bench.json"
    argv = ["data", "--data", str(tmp_path), "--workers", "1", "--batches", "2", "--batch-size", "4"]
    argv += ["--warmup", "1", "--repeats", "1", "--image-size", "64", "--json", str(out)]
    code = bench_main(argv)
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    result = json.loads(out.read_text())
    assert result == json.loads(stdout)
    # The settings it ran with, and the split it read (a root's train/ when there is one).
    assert (result["workers"], result["batches"], result["batch_size"], result["image_size"]) == (1, 2, 4, 64)
    assert result["data"] == str(tmp_path / "train")
    assert result["images_per_second"] > 0 and result["baseline_images_per_second"] > 0


def test_bench_data_missing_folder_is_one_line(tmp_path, capsys):
    assert bench_main(["data", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "nope" in err
