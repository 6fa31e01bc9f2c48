"""`scnet-predict` on real checkpoint files and real image files: names, probabilities, order, bad files, JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo

import scnet
from scnet.cli.predict import main

from ..data.images import encode, random_image
from ..inference import crafted_state_dict, random_model
from . import reference_preprocessing as ref

CLASSES = ["cat", "dog", "fox"]
FAVOURED = 1  # the crafted training checkpoint predicts "dog" for every image
RELEASE_FAVOURED = 207  # the crafted 1000-class file's top class
CONFIG = {
    "model": {"name": "scnet50", "num_classes": 3},
    "data": {"image_size": 112, "crop_pct": 1.0, "interpolation": "bilinear"},  # scnet50 needs >= 97 px
}
SMALL = ["--image-size", "112"]  # for the bare files, whose default would be 224 px: a quarter of the compute


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def files(module_tmp: Path) -> dict[str, Path]:
    """Checkpoints whose answers are known in advance, and folders of real image files."""
    tmp = module_tmp
    crafted = crafted_state_dict(FAVOURED, num_classes=3)
    paths = {"training": tmp / "last.pth", "bias": tmp / "bias.pt"}
    torch.save({"model": crafted, "config": CONFIG, "classes": CLASSES, "epoch": 1}, paths["training"])
    torch.save(crafted["fc.bias"], paths["bias"])  # what the softmax is of: the logits of a zero-weight head
    # The original release's layout: a bare 1000-class state_dict, no class list.
    paths["release"] = tmp / "scnet50-dc6a7e87.pth"
    torch.save(crafted_state_dict(RELEASE_FAVOURED, num_classes=1000), paths["release"])
    paths["bare3"] = tmp / "bare3.pth"
    torch.save(crafted, paths["bare3"])
    # Predictions that depend on the image: random weights, the head scaled down so that the softmax is not
    # saturated (the random features are in the hundreds) and every probability differs from image to image.
    weights = random_model().state_dict()
    weights["fc.weight"] = weights["fc.weight"] * 0.01
    paths["random"] = tmp / "random.pth"
    torch.save({"model": weights, "config": CONFIG, "classes": CLASSES}, paths["random"])

    # A tree of images of several sizes and formats, with files that are not to be read.
    photos = tmp / "photos"
    _write(photos / "b" / "deep" / "z.png", encode(random_image(150, 120, seed=1), "PNG"))
    _write(photos / "a.jpg", encode(random_image(64, 48, seed=2)))  # smaller than the crop: upsampled
    _write(photos / "b" / "y.JPEG", encode(random_image(300, 200, seed=3)))
    _write(photos / "c" / "gray.png", encode(Image.new("L", (120, 130), 77), "PNG"))
    _write(photos / "notes.txt", b"not an image, and not named like one: never read")
    _write(photos / ".thumbs" / "hidden.jpg", b"a hidden folder: never read")
    paths["photos"] = photos
    paths["photo_order"] = [photos / "a.jpg", photos / "b" / "deep" / "z.png", photos / "b" / "y.JPEG"]
    paths["photo_order"].append(photos / "c" / "gray.png")

    mixed = tmp / "mixed"
    _write(mixed / "1.jpg", encode(random_image(120, 100, seed=4)))
    paths["bad"] = _write(mixed / "2.jpg", bytes(range(256)) * 8)  # random bytes under an image name
    _write(mixed / "3.png", encode(random_image(100, 140, seed=5), "PNG"))
    paths["mixed"] = mixed
    return paths


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([*map(str, args), "--batch-size", "3"])
    out, err = capsys.readouterr()
    return code, out, err


def _blocks(out: str) -> list[tuple[str, list[tuple[float, int, str]]]]:
    """stdout parsed back: per image, its path and its ``prob  index  name`` lines."""
    blocks = []
    for block in out.strip().split("\n\n"):
        path, *lines = block.splitlines()
        rows = []
        for line in lines:
            prob, index, name = line.split(maxsplit=2)
            rows.append((float(prob), int(index), name))
        blocks.append((path, rows))
    return blocks


def _softmax(logits: list[float]) -> list[float]:
    """Computed here in float64 from the head's logits, not by the code under test."""
    exps = [math.exp(x - max(logits)) for x in logits]
    return [e / sum(exps) for e in exps]


def test_crafted_checkpoint_names_and_probabilities(files, tmp_path, capsys):
    out_json = tmp_path / "result.json"
    code, out, err = _run(capsys, "--checkpoint", files["training"], files["photos"], "--topk", 3, "--json", out_json)
    assert code == 0, err
    assert err == ""
    bias = torch.load(files["bias"], weights_only=True).tolist()
    probs = _softmax(bias)
    ranking = sorted(range(3), key=lambda i: -bias[i])
    assert ranking[0] == FAVOURED
    blocks = _blocks(out)
    # Every image of the tree, sorted by path; the text file and the hidden folder left out.
    assert [path for path, _ in blocks] == [str(p) for p in files["photo_order"]]
    for _, rows in blocks:
        assert [(i, name) for _, i, name in rows] == [(i, CLASSES[i]) for i in ranking]
        assert [p for p, _, _ in rows] == pytest.approx([probs[i] for i in ranking], abs=5e-5)  # printed to 4 places
    result = json.loads(out_json.read_text())
    assert result["failed"] == []
    assert result["classes_from"] == f"checkpoint {files['training']}"
    assert (result["model"], result["image_size"], result["topk"]) == ("scnet50", 112, 3)
    assert [p["image"] for p in result["predictions"]] == [str(p) for p in files["photo_order"]]
    for prediction in result["predictions"]:
        assert [t["index"] for t in prediction["top"]] == ranking
        assert [t["name"] for t in prediction["top"]] == [CLASSES[i] for i in ranking]
        assert [t["prob"] for t in prediction["top"]] == pytest.approx([probs[i] for i in ranking], rel=1e-5)


def test_release_file_is_named_by_imagenet_classes(files, tmp_path, capsys):
    out_json = tmp_path / "release.json"
    image = files["photo_order"][0]
    code, out, err = _run(
        capsys, "--checkpoint", files["release"], "--model", "scnet50", image, *SMALL, "--json", out_json
    )
    assert code == 0, err
    info = ImageNetInfo("imagenet-1k")
    # The crafted bias: 10 for the favoured class, then 0, -1, -2, ... for classes 0, 1, 2, ...
    expected = [RELEASE_FAVOURED, 0, 1, 2, 3]
    [(path, rows)] = _blocks(out)
    assert path == str(image)
    assert [(i, name) for _, i, name in rows] == [(i, info.index_to_description(i)) for i in expected]
    top = json.loads(out_json.read_text())["predictions"][0]["top"]
    assert [(t["index"], t["name"]) for t in top] == [(i, info.index_to_description(i)) for i in expected]


def test_bare_file_without_class_list_is_named_by_index(files, capsys):
    code, out, err = _run(capsys, "--checkpoint", files["bare3"], "--model", "scnet50", files["photo_order"][1], *SMALL)
    assert code == 0, err
    [(_, rows)] = _blocks(out)
    assert [name for _, _, name in rows] == [str(i) for _, i, _ in rows]
    assert rows[0][1] == FAVOURED and len(rows) == 3  # --topk 5 capped at the 3 classes


def _answers(capsys, tmp_path: Path, *args) -> dict[str, list[tuple[int, float]]]:
    """image -> its top (index, prob) pairs, from the JSON of one in-process run."""
    out_json = tmp_path / f"answers{len(list(tmp_path.glob('answers*.json')))}.json"
    code, _, err = _run(capsys, *args, "--json", out_json)
    assert code == 0, err
    predictions = json.loads(out_json.read_text())["predictions"]
    return {p["image"]: [(t["index"], t["prob"]) for t in p["top"]] for p in predictions}


def test_answers_belong_to_their_images_whatever_the_batching(files, tmp_path, capsys):
    """A model whose answers depend on the image: each image answered alone equals its answer in a folder
    run (batches of 3 over 4 images, a loader worker), so no answer is given to another image."""
    together = _answers(capsys, tmp_path, "--checkpoint", files["random"], files["photos"], "--workers", 1)
    alone = {}
    for image in files["photo_order"]:
        alone.update(_answers(capsys, tmp_path, "--checkpoint", files["random"], image))
    assert list(together) == list(alone) == [str(p) for p in files["photo_order"]]
    for path, top in together.items():
        assert [i for i, _ in top] == [i for i, _ in alone[path]], path
        assert [p for _, p in top] == pytest.approx([p for _, p in alone[path]], rel=1e-3), path
    # The images do get answers of their own: a swap of two answers would not go unnoticed.
    first = [top[0][1] for top in together.values()]
    assert all(a != pytest.approx(b, rel=0.01) for i, a in enumerate(first) for b in first[i + 1 :]), first


def test_bad_file_is_one_warning_and_the_others_are_answered(files, tmp_path, capsys):
    out_json = tmp_path / "mixed.json"
    code, out, err = _run(capsys, "--checkpoint", files["training"], files["mixed"], "--json", out_json)
    assert code == 0
    assert err.count("\n") == 1 and err.startswith(f"scnet-predict: warning: {files['bad']}: cannot decode image")
    mixed = files["mixed"]
    assert [path for path, _ in _blocks(out)] == [str(mixed / "1.jpg"), str(mixed / "3.png")]
    result = json.loads(out_json.read_text())
    assert [p["image"] for p in result["predictions"]] == [str(mixed / "1.jpg"), str(mixed / "3.png")]
    assert [f["image"] for f in result["failed"]] == [str(files["bad"])]
    assert str(files["bad"]) in result["failed"][0]["error"]


def test_no_readable_image_is_exit_1(files, tmp_path, capsys):
    out_json = tmp_path / "none.json"
    code, out, err = _run(capsys, "--checkpoint", files["training"], files["bad"], "--json", out_json)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"scnet-predict: warning: {files['bad']}")
    assert lines[1:] == ["scnet-predict: error: none of the 1 image(s) could be read"]
    assert json.loads(out_json.read_text())["predictions"] == []


BAD_INPUTS = {
    "missing image": (["--checkpoint", "{training}", "{tmp}/nope.jpg"], "{tmp}/nope.jpg: no such file or folder"),
    "folder without images": (["--checkpoint", "{training}", "{tmp}"], "{tmp}: no images"),
    "missing checkpoint": (["--checkpoint", "{tmp}/nope.pth", "{photos}"], "nope.pth"),
    "bare file without --model": (["--checkpoint", "{bare3}", "{photos}"], "--model"),
    "topk 0": (["--checkpoint", "{training}", "{photos}", "--topk", "0"], "--topk"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case, files, tmp_path, capsys):
    argv, expected = BAD_INPUTS[case]
    names = {k: str(v) for k, v in files.items() if isinstance(v, Path)} | {"tmp": str(tmp_path)}
    out_json = tmp_path / "result.json"
    code, out, err = _run(capsys, *[a.format(**names) for a in argv], "--json", out_json)
    assert code == 2
    assert err.startswith("scnet-predict: error:") and err.count("\n") == 1, err
    assert expected.format(**names) in err
    assert out == "" and not out_json.exists()


def test_missing_path_as_a_process_has_no_traceback(files, tmp_path):
    missing = tmp_path / "holiday" / "beach.jpg"
    cmd = [sys.executable, "-m", "scnet.cli.predict", "--checkpoint", str(files["training"]), str(missing)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"scnet-predict: error: {missing}: no such file or folder\n"
    assert proc.stdout == ""


# --------------------------------------------------------------------------------------------------
# Against an independent answer: torchvision's PIL pipeline on a probe checkpoint (reference_preprocessing)

PROBE = (112, 0.85, "bicubic")  # the probe's recorded settings: none of them is the model's default
PROBE_CONFIG = {
    "model": {"name": "scnet50", "num_classes": ref.NUM_CLASSES},
    "data": dict(zip(("image_size", "crop_pct", "interpolation"), PROBE, strict=True)),
}


@pytest.fixture(scope="module")
def probe(module_tmp: Path) -> dict:
    """A probe checkpoint whose model_ema has another head, and pictures: two scenes (one shrunk, one
    enlarged at the probe's settings) and two block pictures whose sides divide 112 (enlarged 8x at crop 1.0)."""
    tmp = module_tmp / "probe"
    weights = ref.probe_state_dict(head_seed=0)
    ema = {**weights, **ref.probe_head(seed=1)}  # shares every other tensor: torch.save writes each storage once
    tmp.mkdir()
    checkpoint = tmp / "probe.pth"
    torch.save({"model": weights, "model_ema": ema, "config": PROBE_CONFIG, "classes": ref.CLASSES}, checkpoint)
    pictures = tmp / "pictures"
    pictures.mkdir()
    images = {
        "blocks": ref.block_image(16, 14, seed=2),
        "blocks_tall": ref.block_image(14, 16, seed=3),
        "portrait": ref.scene_image(110, 150, seed=1),
        "scene": ref.scene_image(200, 160, seed=0),
    }
    for name, image in images.items():
        image.save(pictures / f"{name}.png")  # PNG: PIL and libpng decode the same pixels
    return {"checkpoint": checkpoint, "model": weights, "model_ema": ema, "pictures": pictures}


def _probe_answers(capsys, tmp_path: Path, checkpoint: Path, images: list[Path], *flags) -> tuple[dict, dict]:
    """scnet-predict's JSON for ``images``, and its answers: image -> top (index, prob) pairs."""
    out_json = tmp_path / "probe.json"
    code, _, err = _run(capsys, "--checkpoint", checkpoint, *images, *flags, "--json", out_json)
    assert code == 0, err
    result = json.loads(out_json.read_text())
    return result, {p["image"]: [(t["index"], t["prob"]) for t in p["top"]] for p in result["predictions"]}


def test_probe_checkpoint_computes_its_formula(probe):
    """The expected answers come from the probe's formula: the checkpoint's scnet50 must compute exactly that."""
    model = scnet.create_model("scnet50", num_classes=ref.NUM_CLASSES)
    model.load_state_dict(probe["model"])
    noise = torch.randn(3, 112, 112, generator=torch.Generator().manual_seed(0))
    crops = torch.stack([ref.reference_input(probe["pictures"] / "scene.png", *PROBE), noise])
    with torch.no_grad():
        logits = model.eval()(crops).double()
    assert torch.allclose(logits, ref.probe_logits(crops, probe["model"]), atol=1e-4)
    assert logits.std(dim=1).min() > 0.5  # classes apart, not a constant answer


# flags -> (the settings the reference uses, EMA weights, the pictures, the settings without the flag in question)
PROBE_CASES = {
    "the checkpoint's settings": ([], PROBE, False, "all", None),
    "--crop-pct 0.5": (["--crop-pct", "0.5"], (112, 0.5, "bicubic"), False, "all", PROBE),
    "--image-size 128": (["--image-size", "128"], (128, 0.85, "bicubic"), False, "all", PROBE),
    "--interpolation bilinear": (["--interpolation", "bilinear"], (112, 0.85, "bilinear"), False, "all", PROBE),
    # A whole enlargement (14 px -> 112): nearest picks the same pixels whichever pixel-centre convention.
    "--interpolation nearest": (
        ["--interpolation", "nearest", "--crop-pct", "1.0"],
        (112, 1.0, "nearest"),
        False,
        "blocks",
        (112, 1.0, "bicubic"),
    ),
    "--ema": (["--ema"], PROBE, True, "all", PROBE),
}


@pytest.mark.parametrize("case", list(PROBE_CASES))
def test_probe_answers_are_the_pil_pipelines(case, probe, tmp_path, capsys):
    """scnet-predict's top-5 and probabilities are those of torchvision's PIL pipeline at the settings its flags
    (else the checkpoint's config) name, with the weights --ema names; and each flag changes the answer."""
    flags, settings, ema, which, without = PROBE_CASES[case]
    images = sorted(probe["pictures"].glob("*.png" if which == "all" else "blocks*.png"))
    result, got = _probe_answers(capsys, tmp_path, probe["checkpoint"], images, *flags)
    expected = ref.expected_log_probs(images, probe["model_ema" if ema else "model"], *settings)
    ref.check_answers(got, expected, k=5)
    assert (result["image_size"], result["crop_pct"], result["interpolation"]) == settings
    if without is not None:  # what the same run without this flag answers: another top-5 for some picture
        before = ref.expected_log_probs(images, probe["model"], *without)
        assert any(ref.top_indices(expected[i], 5) != ref.top_indices(before[i], 5) for i in expected), case


def test_probe_nearest_is_pils_nearest_at_a_fractional_scale(probe, tmp_path, capsys):
    """14 px -> 131 px (x9.36): where the two conventions pick different pixels."""
    image = probe["pictures"] / "blocks.png"
    _, got = _probe_answers(capsys, tmp_path, probe["checkpoint"], [image], "--interpolation", "nearest")
    ref.check_answers(got, ref.expected_log_probs([image], probe["model"], 112, 0.85, "nearest"), k=5)
