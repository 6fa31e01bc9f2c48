"""`scnet-bench` through its entry point: `data` on a tiny ImageFolder tree, the refusals of `model` and `kernels`."""

from __future__ import annotations

import json

import pytest

from scnet.cli.bench import build_parser
from scnet.cli.bench import main as bench_main

from ..data.images import make_tree


def _data(tmp_path, *more: str) -> list[dict]:
    """``scnet-bench data`` on a small real JPEG folder (2 classes of 3), batch 2, 1 warm-up + 2 measured batches,
    on the CPU: its JSON rows."""
    if not (tmp_path / "train").is_dir():
        make_tree(tmp_path / "train", {"a": 3, "b": 3}, size=(96, 72))
    out = tmp_path / "bench.json"
    argv = ["data", "--data", str(tmp_path), "--batches", "2", "--batch-size", "2", "--warmup", "1"]
    argv += ["--repeats", "1", "--image-size", "64", "--device", "cpu", "--json", str(out), *more]
    assert bench_main(argv) == 0
    return json.loads(out.read_text())


def test_bench_data_rows_per_decode_and_workers(tmp_path, capsys):
    """Both decode paths at each worker count, then torchvision's; on CPU the gpu path runs with the CPU decoder
    standing in for nvjpeg, and its row says so."""
    rows = _data(tmp_path, "--decode", "cpu,gpu", "--workers", "0,1")
    stdout, stderr = capsys.readouterr()
    loaders = [("scnet", "cpu"), ("scnet", "gpu"), ("torchvision", "cpu")]
    assert [(r["loader"], r["decode"], r["workers"]) for r in rows] == [(*ld, w) for w in (0, 1) for ld in loaders]
    for r in rows:
        assert r["images_per_second"] > 0 and r["images_per_second_per_worker"] > 0 and r["vs_torchvision"] > 0
        assert r["device"] == "cpu" and r["skipped"] is None
        assert r["train_images_per_second"] is None and r["wait_share"] is None  # no --model
        # The settings it ran with, and the split it read (a root's train/ when there is one).
        assert (r["batches"], r["warmup"], r["batch_size"], r["image_size"]) == (2, 1, 2, 64)
        assert r["data"] == str(tmp_path / "train")
    assert [r["stand_in"] for r in rows] == [False, True, False] * 2
    assert "standing in for nvjpeg" in rows[1]["decoded_by"]
    # What it prints is a table for people: a line of settings, a header and one line per row.
    lines = stdout.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'train'}: batch 2, 64 px") and lines[1].split()[:3] == [
        "loader",
        "decode",
        "workers",
    ]
    assert [line.split()[:3] for line in lines[2:8]] == [[*ld, str(w)] for w in (0, 1) for ld in loaders]
    assert "standing in for nvjpeg" in lines[3]


def test_bench_data_model_wait_share(tmp_path, capsys):
    """--model: a training loop of the model fed by each decode path: its img/s and the share spent waiting."""
    rows = _data(tmp_path, "--decode", "cpu", "gpu", "--workers", "0", "--model", "resnet50", "--channels-last")
    assert [(r["loader"], r["decode"]) for r in rows] == [("scnet", "cpu"), ("scnet", "gpu"), ("torchvision", "cpu")]
    for r in rows[:2]:
        assert r["train_images_per_second"] > 0 and 0 < r["wait_share"] < 1
        assert (r["model"], r["amp"], r["channels_last"]) == ("resnet50", "none", True)
    assert rows[2]["train_images_per_second"] is None and rows[2]["wait_share"] is None
    assert "training resnet50 (amp none, channels_last)" in capsys.readouterr().out


def test_bench_data_list_options_and_refusals(tmp_path, capsys):
    parse = build_parser().parse_args
    base = ["data", "--data", "d"]
    forms = [["--decode", "cpu,gpu"], ["--decode", "cpu", "gpu"], ["--decode", "cpu", "--decode", "gpu"]]
    assert all(parse([*base, *form]).decode == ["cpu", "gpu"] for form in forms)
    assert parse([*base, "--workers", "1,4", "16", "--workers", "4"]).workers == [1, 4, 16]
    assert parse(base).workers == [2] and parse(base).decode is None  # decode: chosen for the device
    with pytest.raises(SystemExit):
        parse([*base, "--workers", "1,x"])
    assert "--workers: not a whole number >= 0: x" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse([*base, "--decode", "cpu,nvjpeg"])
    assert "--decode: invalid choice: nvjpeg" in capsys.readouterr().err
    # Too few images for the batches asked: one line, before anything is measured.
    make_tree(tmp_path / "train", {"a": 2}, size=(96, 72))
    assert bench_main(["data", "--data", str(tmp_path), "--batch-size", "2", "--batches", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "the folder holds 1 full batch of 2, fewer than" in err


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
