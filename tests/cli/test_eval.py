"""`scnet-eval` on real checkpoint files and a tiny real image split: numbers, JSON, bad input, torchrun."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import timm
import torch

import scnet
from scnet.cli.eval import main
from scnet.data.demo import make_demo

from ..data.images import make_tree
from ..inference import (
    COUNTS,
    CROP_PCT,
    IMAGE_SIZE,
    TOTAL,
    crafted_state_dict,
    expected_real_top1,
    make_val_split,
    random_model,
    top1_of,
    with_head,
    write_real_json,
)
from . import reference_preprocessing as ref

CONFIG = {
    "model": {"name": "scnet50", "num_classes": 3},
    "data": {"image_size": IMAGE_SIZE, "crop_pct": CROP_PCT, "interpolation": "bilinear"},
}


@pytest.fixture(scope="module")
def files(module_tmp):
    """Data root, real.json and checkpoints, each with predictions known in advance (except ``random``)."""
    tmp = module_tmp / "eval"
    tmp.mkdir()
    crafted = crafted_state_dict(favoured=0)
    paths = {"data": make_val_split(tmp / "imagenet"), "real": write_real_json(tmp / "real.json")}
    # This project's training checkpoint: weights predict class 0, their EMA class 1.
    paths["training"] = tmp / "last.pth"
    ckpt = {"model": crafted, "model_ema": with_head(crafted, 1), "config": CONFIG, "epoch": 3}
    torch.save(ckpt, paths["training"])
    paths["no_ema"] = tmp / "no_ema.pth"
    torch.save({"model": crafted, "config": CONFIG}, paths["no_ema"])
    # The original release's format: a bare state_dict (predicts class 2).
    paths["bare"] = tmp / "scnet50-dc6a7e87.pth"
    torch.save(with_head(crafted, 2), paths["bare"])
    paths["random"] = tmp / "random.pth"
    torch.save({"model": random_model().state_dict(), "config": CONFIG}, paths["random"])
    paths["resnet"] = tmp / "resnet50.pth"
    torch.save(timm.create_model("resnet50", num_classes=3).state_dict(), paths["resnet"])
    paths["garbage"] = tmp / "garbage.pth"
    paths["garbage"].write_bytes(b"not a checkpoint")
    paths["four_classes"] = make_tree(tmp / "four" / "val", {"a": 1, "b": 1, "c": 1, "d": 1}).parent
    paths["empty_class"] = make_tree(tmp / "empty" / "val", {"a": 1, "b": 1}).parent
    (paths["empty_class"] / "val" / "c").mkdir()
    return paths


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args), "--workers", "0", "--batch-size", "4"])
    out, err = capsys.readouterr()
    return code, out, err


def test_training_checkpoint(files, tmp_path, capsys):
    out_json = tmp_path / "result.json"
    code, out, err = _run(
        capsys,
        *("--checkpoint", files["training"], "--data", files["data"]),
        *("--real-labels", files["real"], "--json", out_json),
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "top-1 28.571%" in lines[0] and "top-5 100.000%" in lines[0] and "ReaL" in lines[1]
    result = json.loads(out_json.read_text())
    real_top1, real_images = expected_real_top1(favoured=0)
    model = scnet.create_model("scnet50", num_classes=3)
    assert result["top1"] == pytest.approx(top1_of(0))
    assert result["top5"] == 100.0
    assert result["images"] == TOTAL
    assert (result["real_top1"], result["real_images"]) == (pytest.approx(real_top1), real_images)
    assert result["model"] == "scnet50" and result["checkpoint"] == str(files["training"])
    assert result["params"] == scnet.count_params(model)
    assert result["macs"] == scnet.count_macs(model, IMAGE_SIZE)  # at the evaluated size, from the config
    assert (result["split"], result["image_size"], result["crop_pct"]) == ("val", IMAGE_SIZE, CROP_PCT)
    assert result["skipped"] == [] and result["ema"] is False


def test_ema_weights_and_command_line_over_config(files, tmp_path, capsys):
    out_json = tmp_path / "ema.json"
    code, _, err = _run(
        capsys,
        *("--checkpoint", files["training"], "--data", files["data"]),
        *("--ema", "--image-size", 128, "--model", "scnet50", "--json", out_json),  # --model: the config's own
    )
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert result["top1"] == pytest.approx(top1_of(1)) and result["ema"] is True
    assert result["image_size"] == 128 and result["crop_pct"] == CROP_PCT
    assert "real_top1" not in result


def test_bare_state_dict_with_model(files, tmp_path, capsys):
    out_json = tmp_path / "bare.json"
    code, _, err = _run(
        capsys,
        *("--checkpoint", files["bare"], "--data", files["data"], "--model", "scnet50"),
        *("--image-size", IMAGE_SIZE, "--crop-pct", CROP_PCT, "--json", out_json),
    )
    assert code == 0, err
    result = json.loads(out_json.read_text())
    assert (result["top1"], result["images"], result["model"]) == (pytest.approx(top1_of(2)), TOTAL, "scnet50")


BAD_INPUTS = {
    "missing checkpoint": (["--checkpoint", "{tmp}/nope.pth", "--data", "{data}"], "nope.pth"),
    "unreadable checkpoint": (["--checkpoint", "{garbage}", "--data", "{data}"], "cannot read"),
    "another architecture": (["--checkpoint", "{resnet}", "--data", "{data}", "--model", "scnet50"], "does not fit"),
    "missing data folder": (["--checkpoint", "{training}", "--data", "{tmp}/nodata"], "nodata"),
    "empty class folder": (["--checkpoint", "{training}", "--data", "{empty_class}"], "empty class folder"),
    "unknown model": (["--checkpoint", "{bare}", "--data", "{data}", "--model", "scnet51"], "scnet51"),
    "classes differ": (["--checkpoint", "{training}", "--data", "{four_classes}"], "4 classes"),
    "image too small": (["--checkpoint", "{training}", "--data", "{data}", "--image-size", "96"], "97"),
    "bare without --model": (["--checkpoint", "{bare}", "--data", "{data}"], "--model"),
    "--ema without EMA": (["--checkpoint", "{no_ema}", "--data", "{data}", "--ema"], "EMA"),
    "--model not the checkpoint's": (
        ["--checkpoint", "{training}", "--data", "{data}", "--model", "sc_seresnet50"],
        "--model sc_seresnet50, but its config trained scnet50",
    ),
    "missing real.json": (["--checkpoint", "{training}", "--data", "{data}", "--real-labels", "{tmp}/r.json"], "r.js"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, files, tmp_path, capsys):
    argv, expected = BAD_INPUTS[case]
    names = {k: str(v) for k, v in files.items()} | {"tmp": str(tmp_path)}
    out_json = tmp_path / "result.json"
    code, out, err = _run(capsys, *[a.format(**names) for a in argv], "--json", out_json)
    assert code == 2
    assert err.startswith("scnet-eval: error:") and err.count("\n") == 1, err
    assert expected in err
    assert out == "" and not out_json.exists()


@pytest.mark.slow
def test_bad_input_as_a_process_has_no_traceback(files, tmp_path):
    cmd = [sys.executable, "-m", "scnet.cli.eval", "--checkpoint", str(files["bare"]), "--data", str(files["data"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("scnet-eval: error:") and proc.stderr.count("\n") == 1, proc.stderr


# --------------------------------------------------------------------------------------------------
# Bad files are skipped, not counted


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """The COUNTS split with one unreadable file of class c (random bytes under a .JPEG name)."""
    root = make_val_split(tmp_path_factory.mktemp("bad") / "imagenet")
    bad = sorted((root / "val" / "c").iterdir())[1]
    bad.write_bytes(bytes(range(256)) * 8)  # not an image
    return root, bad


def test_bad_file_is_skipped_and_listed(files, bad_data, tmp_path, capsys):
    root, bad = bad_data
    out_json = tmp_path / "result.json"
    code, out, err = _run(capsys, "--checkpoint", files["training"], "--data", root, "--json", out_json)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    # Predicts class a (2 images) for all: 2 of the 6 images that were read, nothing counted twice.
    assert (result["images"], result["skipped"]) == (TOTAL - 1, [str(bad)])
    assert result["top1"] == pytest.approx(100.0 * COUNTS["a"] / (TOTAL - 1))
    assert f"({TOTAL - 1} images, 1 skipped, {IMAGE_SIZE} px)" in out
    assert err.startswith("scnet-eval: warning:") and str(bad) in err and err.count("\n") == 1
    code, out, err = _run(capsys, "--checkpoint", files["training"], "--data", root, "--strict")
    assert code == 2 and err.startswith("scnet-eval: error:") and str(bad) in err and err.count("\n") == 1


@pytest.mark.slow
def test_torchrun_two_processes_count_what_one_does(files, bad_data, tmp_path, capsys):
    """Two processes count every image once, as one process does (ReaL included), and skip a bad file on each
    rank; rank 0 alone prints and warns."""
    root, bad = bad_data
    # A second bad file, so that each rank meets one: rank 0 reads samples 0, 2, 4, 6 and rank 1 samples
    # 1, 3, 5; c's first file is sample 3 (rank 1), its second (the fixture's) sample 4 (rank 0).
    other = sorted((root / "val" / "c").iterdir())[0]
    data = tmp_path / "imagenet"
    shutil.copytree(root, data)
    (data / "val" / "c" / other.name).write_bytes(b"")
    common = ["--checkpoint", str(files["random"]), "--data", str(data), "--workers", "0", "--batch-size", "4"]
    common += ["--device", "cpu", "--real-labels", str(files["real"])]
    assert main([*common, "--json", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    proc = subprocess.run(
        [*torchrun, "-m", "scnet.cli.eval", *common, "--json", str(tmp_path / "two.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(f"({TOTAL - 2} images, 2 skipped,") == 1
    assert proc.stderr.count("scnet-eval: warning:") == 1  # rank 0 alone, naming every rank's files
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for key in ("images", "top1", "top5", "real_top1", "real_images"):
        assert two[key] == one[key], key
    expected = sorted(str(data / "val" / "c" / p.name) for p in (bad, other))
    assert two["images"] == TOTAL - 2 and sorted(two["skipped"]) == sorted(one["skipped"]) == expected


# --------------------------------------------------------------------------------------------------
# Class lists: the checkpoint's wins


@pytest.fixture(scope="module")
def partial(module_tmp):
    """A val split that lacks the first of 4 training classes (a b c d), a checkpoint that saved the list."""
    tmp = module_tmp / "partial"
    tmp.mkdir()
    data = make_tree(tmp / "data" / "val", {"b": 1, "c": 3, "d": 1}).parent
    crafted = crafted_state_dict(favoured=2, num_classes=4)  # predicts class 2, "c"
    config = {**CONFIG, "model": {"name": "scnet50", "num_classes": 4}}
    paths = {"data": data, "checkpoint": tmp / "best.pth", "bare": tmp / "bare.pth", "old": tmp / "old.pth"}
    torch.save({"model": crafted, "config": config, "classes": ["a", "b", "c", "d"]}, paths["checkpoint"])
    torch.save({"model": crafted, "config": config}, paths["old"])  # a checkpoint from before class lists
    torch.save(crafted, paths["bare"])
    return paths


def _result(capsys, tmp_path, checkpoint, data, *extra) -> dict:
    """Run scnet-eval (in-process) and read its JSON; the run must succeed."""
    out_json = tmp_path / f"{len(list(tmp_path.glob('*.json')))}.json"
    code, _, err = _run(capsys, "--checkpoint", checkpoint, "--data", data, *extra, "--json", out_json)
    assert code == 0, err
    return json.loads(out_json.read_text())


def test_checkpoint_class_list_labels_a_partial_split(partial, tmp_path, capsys):
    data = partial["data"]
    bare = ["--model", "scnet50", "--image-size", IMAGE_SIZE, "--crop-pct", CROP_PCT]
    results = {"checkpoint": _result(capsys, tmp_path, partial["checkpoint"], data)}
    # Without a class list, the release's bare state_dict cannot be evaluated on a partial split ...
    code, _, err = _run(capsys, "--checkpoint", partial["bare"], "--data", data, *bare)
    assert code == 2 and "has 3 classes but the model has 4 outputs" in err
    # ... with a hand-written classes.txt it can, and gives the same numbers as the checkpoint's own list.
    (data / "classes.txt").write_text("a\nb\nc\nd\n")
    try:
        results["bare + classes.txt"] = _result(capsys, tmp_path, partial["bare"], data, *bare)
        results["old + classes.txt"] = _result(capsys, tmp_path, partial["old"], data)
        # A classes.txt that disagrees does not override the checkpoint's list.
        (data / "classes.txt").write_text("d\nc\nb\na\n")
        results["checkpoint over classes.txt"] = _result(capsys, tmp_path, partial["checkpoint"], data)
    finally:
        (data / "classes.txt").unlink()
    expected = 100.0 * 3 / 5  # the 3 images of c, out of 5; a val split indexed on its own would give d's 1 of 5
    for case, result in results.items():
        assert (result["images"], result["top1"]) == (5, pytest.approx(expected)), case
    own = f"checkpoint {partial['checkpoint']}"
    assert results["checkpoint"]["classes_from"] == results["checkpoint over classes.txt"]["classes_from"] == own
    assert results["bare + classes.txt"]["classes_from"] == str(data / "classes.txt")


def test_val_folder_outside_the_checkpoint_classes_is_one_line(partial, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(partial["data"], data)
    make_tree(data / "val", {"e": 1})
    code, out, err = _run(capsys, "--checkpoint", partial["checkpoint"], "--data", data)
    assert code == 2 and out == ""
    assert err.startswith(f"scnet-eval: error: {data / 'val' / 'e'}: class folder 'e' is not in the classes of ")
    assert err.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# --data demo: the built-in set at data/demo, never drawn here


def test_data_demo_names_the_built_in_set(files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "--checkpoint", files["training"], "--data", "demo")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "scnet-data demo --out data/demo" in err
    assert list(tmp_path.iterdir()) == []  # not drawn by the evaluator
    make_demo(tmp_path / "data" / "demo", num_classes=3, train_per_class=1, val_per_class=1, progress=False)
    code, _, err = _run(capsys, "--checkpoint", files["training"], "--data", "demo", "--json", "demo.json")
    assert code == 0, err
    code, _, err = _run(capsys, "--checkpoint", files["training"], "--data", "data/demo", "--json", "path.json")
    assert code == 0, err
    by_name, by_path = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("demo", "path"))
    assert by_name["data"] == by_path["data"] == "data/demo"
    assert (by_name["images"], by_name["top1"]) == (by_path["images"], by_path["top1"]) == (3, pytest.approx(100 / 3))


# --------------------------------------------------------------------------------------------------
# Against an independent answer: torchvision's PIL pipeline on a probe checkpoint (reference_preprocessing)

PROBE = (112, 0.85, "bicubic")  # the probe's recorded settings: none of them is the model's default
PROBE_CONFIG = {
    "model": {"name": "scnet50", "num_classes": ref.NUM_CLASSES},
    "data": dict(zip(("image_size", "crop_pct", "interpolation"), PROBE, strict=True)),
}


@pytest.fixture(scope="module")
def probe_split(module_tmp):
    """A probe checkpoint whose model_ema has another head, and a val split of 5 scenes and 5 block pictures
    labelled from the reference at the checkpoint's settings: each scene with its top-1 class, each block
    picture with its 5th, so that top-1 and top-5 both move when a flag moves the answers."""
    tmp = module_tmp / "probe"
    (tmp / "pictures").mkdir(parents=True)
    weights = ref.probe_state_dict(head_seed=0)
    ema = {**weights, **ref.probe_head(seed=1)}  # shares every other tensor: torch.save writes each storage once
    checkpoint = tmp / "probe.pth"
    torch.save({"model": weights, "model_ema": ema, "config": PROBE_CONFIG, "classes": ref.CLASSES}, checkpoint)
    pictures = []
    for i in range(5):
        for name, image in (
            (f"scene{i}", ref.scene_image(150 + 11 * i, 120 + 7 * i, seed=i)),
            (f"blocks{i}", ref.block_image(14 + i, 12 + i, seed=5 + i)),
        ):
            image.save(tmp / "pictures" / f"{name}.png")  # PNG: PIL and libpng decode the same pixels
            pictures.append(tmp / "pictures" / f"{name}.png")
    expected = ref.expected_log_probs(pictures, weights, *PROBE)
    samples = []
    for picture in pictures:
        label = ref.top_indices(expected[str(picture)], 5)[0 if picture.stem.startswith("scene") else 4]
        folder = tmp / "data" / "val" / ref.CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        samples.append((picture.rename(folder / picture.name), label))
    return {"checkpoint": checkpoint, "model": weights, "model_ema": ema, "data": tmp / "data", "samples": samples}


def _expected_accuracy(samples: list, weights: dict, settings: tuple) -> tuple[float, float]:
    """Top-1 and top-5 (percent) of the reference's answers for the labelled pictures."""
    log_probs = ref.expected_log_probs([path for path, _ in samples], weights, *settings)
    hits = [ref.hits(log_probs[str(path)], label) for path, label in samples]
    return 100.0 * sum(h1 for h1, _ in hits) / len(hits), 100.0 * sum(h5 for _, h5 in hits) / len(hits)


# flags -> (the settings the reference uses, EMA weights)
PROBE_CASES = {
    "the checkpoint's settings": ([], PROBE, False),
    "--crop-pct 0.5": (["--crop-pct", "0.5"], (112, 0.5, "bicubic"), False),
    "--image-size 128": (["--image-size", "128"], (128, 0.85, "bicubic"), False),
    "--interpolation bilinear": (["--interpolation", "bilinear"], (112, 0.85, "bilinear"), False),
    "--ema": (["--ema"], PROBE, True),
}


@pytest.mark.parametrize("case", list(PROBE_CASES))
def test_probe_accuracy_is_the_pil_pipelines(case, probe_split, tmp_path, capsys):
    """scnet-eval's top-1 and top-5 are those of torchvision's PIL pipeline at the settings its flags (else the
    checkpoint's config) name, with the weights --ema names; and each flag changes them."""
    flags, settings, ema = PROBE_CASES[case]
    result = _result(capsys, tmp_path, probe_split["checkpoint"], probe_split["data"], *flags)
    samples = probe_split["samples"]
    top1, top5 = _expected_accuracy(samples, probe_split["model_ema" if ema else "model"], settings)
    assert result["images"] == len(samples)
    assert (result["top1"], result["top5"]) == (pytest.approx(top1), pytest.approx(top5))
    assert (result["image_size"], result["crop_pct"], result["interpolation"], result["ema"]) == (*settings, ema)
    if flags:  # the same run without the flag counts other hits
        assert (top1, top5) != _expected_accuracy(samples, probe_split["model"], PROBE), case
