"""`scnet-bench` through its entry point: `data` on a tiny ImageFolder tree, the refusals of `model` and `kernels`."""

from __future__ import annotations

import json

import pytest

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


def test_bench_model_unknown_suffix_is_one_line_naming_both(capsys):
    assert bench_main(["model", "--model", "scnet50:fast"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert err.startswith("scnet-bench model: error: 'scnet50:fast': unknown suffix ':fast'")
    assert "':layerwise', ':lean'" in err


def test_bench_model_help_names_the_suffixes_and_the_kernel_table(capsys):
    with pytest.raises(SystemExit):
        bench_main(["model", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ":layerwise" in out and ":lean" in out and "--kernel-table FILE.md" in out and "--kernel-steps" in out


def test_bench_kernels_refuses_a_model_without_sc_blocks(capsys):
    """Before building anything: one line naming the SC models to choose from."""
    assert bench_main(["kernels", "--model", "resnet50", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert err.startswith("scnet-bench kernels: error: 'resnet50' is not an SC model; choose from ")
    assert "scnet50" in err and "sc_resnext50_32x4d" in err
