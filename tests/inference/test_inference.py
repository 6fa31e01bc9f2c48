"""load_checkpoint / evaluate_checkpoint on real checkpoint files (training, release, safetensors) and a real split."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import scnet
from scnet.data.loader import build_dataset
from scnet.data.transforms import eval_transform
from scnet.inference import evaluate_checkpoint, load_checkpoint, prepare_evaluation

from ..data.images import make_tree
from ..utils import IMAGENET_MEAN, IMAGENET_STD
from . import (
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

CLASSES = sorted(COUNTS)
DATA = {"image_size": IMAGE_SIZE, "crop_pct": CROP_PCT, "interpolation": "bilinear"}
CONFIG = {"model": {"name": "scnet50", "num_classes": 3}, "data": DATA}
# The JSON that scnet-eval wrote before this module existed, key for key and in order (ReaL keys when asked).
RESULT_KEYS = [
    *("model", "checkpoint", "ema", "data", "split", "num_classes", "classes_from"),
    *("image_size", "crop_pct", "interpolation", "amp", "decode", "batch_size", "world_size"),
    *("top1", "top5", "images", "real_top1", "real_images", "skipped", "params", "macs"),
]


def _same_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> bool:
    ours = model.state_dict()
    return ours.keys() == state_dict.keys() and all(torch.equal(ours[k], v) for k, v in state_dict.items())


def _settings(loaded) -> tuple:
    return loaded.image_size, loaded.crop_pct, loaded.interpolation


@pytest.fixture(scope="module")
def crafted() -> dict[str, torch.Tensor]:
    return crafted_state_dict(favoured=0)


@pytest.fixture(scope="module")
def training(module_tmp, crafted):
    """A training checkpoint as the trainer writes it: weights predict class 0, their EMA class 1."""
    path = module_tmp / "last.pth"
    state = {"model": crafted, "model_ema": with_head(crafted, 1), "config": CONFIG, "classes": CLASSES}
    torch.save({**state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_val_split(tmp_path_factory.mktemp("imagenet"))


# --------------------------------------------------------------------------------------------------
# Reading checkpoints


def test_training_checkpoint(training, crafted):
    loaded = load_checkpoint(training)
    assert (loaded.name, loaded.num_classes, loaded.classes, loaded.config) == ("scnet50", 3, CLASSES, CONFIG)
    assert loaded.is_training_checkpoint and loaded.has_ema and not loaded.ema
    assert (loaded.path, loaded.device, loaded.options) == (training, torch.device("cpu"), {})
    assert _settings(loaded) == (IMAGE_SIZE, CROP_PCT, "bilinear")
    assert not loaded.model.training and _same_weights(loaded.model, crafted)
    # Naming the config's own model is allowed and changes nothing.
    assert _same_weights(load_checkpoint(training, model_name="scnet50").model, crafted)


def test_ema_weights(training, crafted):
    loaded = load_checkpoint(training, ema=True)
    assert loaded.ema and _same_weights(loaded.model, with_head(crafted, 1))
    with torch.no_grad():
        assert loaded.model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)).argmax().item() == 1


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_release_style_bare_state_dict(tmp_path, crafted, suffix):
    weights = with_head(crafted, 2)
    path = tmp_path / f"scnet50-dc6a7e87{suffix}"
    if suffix == ".safetensors":
        save_file(weights, path)
    else:
        torch.save(weights, path)
    loaded = load_checkpoint(path, model_name="scnet50")
    assert (loaded.name, loaded.num_classes, loaded.classes, loaded.config) == ("scnet50", 3, None, {})
    assert not loaded.is_training_checkpoint and not loaded.has_ema
    assert _same_weights(loaded.model, weights)
    # The release evaluated at 224 px, resize to 256 (crop_pct 0.875), bilinear: the SC models' default cfg.
    assert _settings(loaded) == (224, 0.875, "bilinear")


def test_wrapper_prefixes_are_removed(tmp_path, crafted):
    path = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in crafted.items()}, "config": CONFIG}, path)
    assert _same_weights(load_checkpoint(path).model, crafted)


# --------------------------------------------------------------------------------------------------
# The evaluation transform: as given > the checkpoint's config > the model's default cfg


def test_transform_settings_precedence(tmp_path, crafted):
    path = tmp_path / "best.pth"
    config = {**CONFIG, "data": {"image_size": 128, "crop_pct": 0.9, "interpolation": "bicubic"}}
    torch.save({"model": crafted, "config": config}, path)
    assert _settings(load_checkpoint(path)) == (128, 0.9, "bicubic")
    assert _settings(load_checkpoint(path, image_size=112)) == (112, 0.9, "bicubic")
    given = load_checkpoint(path, image_size=144, crop_pct=1.0, interpolation="nearest")
    assert _settings(given) == (144, 1.0, "nearest")

    old = tmp_path / "old.pth"  # a config without a data section: the model's defaults
    torch.save({"model": crafted, "config": {"model": CONFIG["model"]}}, old)
    assert _settings(load_checkpoint(old)) == (224, 0.875, "bilinear")
    baseline = tmp_path / "resnet50.pth"  # a timm baseline: timm's own default cfg for it
    torch.save(timm.create_model("resnet50", num_classes=3).state_dict(), baseline)
    cfg = timm.models.get_pretrained_cfg("resnet50")
    assert _settings(load_checkpoint(baseline, "resnet50")) == (cfg.input_size[-1], cfg.crop_pct, cfg.interpolation)


def test_eval_transform_is_the_resolved_one(tmp_path, crafted):
    path = tmp_path / "best.pth"
    torch.save({"model": crafted, "config": {**CONFIG, "data": {"image_size": 128, "crop_pct": 0.8}}}, path)
    image = torch.randint(0, 256, (3, 150, 200), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = load_checkpoint(path, interpolation="bicubic").eval_transform()(image)
    assert out.shape == (3, 128, 128)
    assert torch.equal(out, eval_transform(128, 0.8, "bicubic")(image))
    assert not torch.equal(out, eval_transform(128, 0.875, "bicubic")(image))  # crop_pct 0.8 was used


# --------------------------------------------------------------------------------------------------
# Model options: the config's, so that the weights run in the function they trained in


SC_OPTIONS = [
    {"pooling_r": 2},
    {"pool_type": "max", "calib_identity": False, "upsample": "bilinear"},
    {"pooling_r": 8, "pool_ceil_mode": True},  # r=8 floors the 4x4 last map of 112 px to nothing; ceil keeps one
]


@pytest.mark.parametrize("options", SC_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_model_options_come_from_the_config(tmp_path, options):
    weights = random_model().state_dict()  # random weights and BN statistics: outputs depend on everything
    path = tmp_path / "options.pth"
    torch.save({"model": weights, "config": {**CONFIG, "model": {**CONFIG["model"], **options}}}, path)
    loaded = load_checkpoint(path)
    assert loaded.options == options

    def built(**kwargs) -> torch.nn.Module:
        model = scnet.create_model("scnet50", num_classes=3, **kwargs)
        model.load_state_dict(weights)
        return model.eval()

    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = loaded.model(x)
        torch.testing.assert_close(out, built(**options)(x), rtol=0, atol=0)
        assert (out - built()(x)).abs().max() > 1e-2  # the release's options: the same state_dict, another function


def test_sc_option_on_a_baseline_is_one_line(tmp_path):
    path = tmp_path / "resnet50.pth"
    config = {"model": {"name": "resnet50", "num_classes": 3, "pooling_r": 2}, "data": DATA}
    torch.save({"model": timm.create_model("resnet50", num_classes=3).state_dict(), "config": config}, path)
    with pytest.raises(ValueError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(str(path)) and "pooling_r=2" in message and "\n" not in message


# --------------------------------------------------------------------------------------------------
# Bad input: one line naming the file or the value


@pytest.fixture(scope="module")
def bad_files(module_tmp, crafted):
    tmp = module_tmp / "bad"
    tmp.mkdir()
    files = {name: tmp / f"{name}.pth" for name in ("garbage", "list", "not_tensors", "bare", "no_ema")}
    files["garbage"].write_bytes(b"not a checkpoint")
    torch.save([1, 2, 3], files["list"])
    torch.save({**crafted, "fc.bias": "ten"}, files["not_tensors"])
    torch.save(crafted, files["bare"])
    torch.save({"model": crafted, "config": CONFIG}, files["no_ema"])
    files["two_classes"] = tmp / "two_classes.pth"
    torch.save({"model": crafted, "config": CONFIG, "classes": ["a", "b"]}, files["two_classes"])
    files["five_in_config"] = tmp / "five.pth"
    torch.save(
        {"model": crafted, "config": {**CONFIG, "model": {"name": "scnet50", "num_classes": 5}}},
        files["five_in_config"],
    )
    files["resnet"] = tmp / "resnet50.pth"
    torch.save(timm.create_model("resnet50", num_classes=3).state_dict(), files["resnet"])
    files["missing"] = tmp / "nope.pth"
    return files


BAD = {
    "missing file": ("missing", {}, "no such checkpoint file"),
    "not a checkpoint": ("garbage", {}, "cannot read checkpoint"),
    "a list": ("list", {}, "not a checkpoint or state_dict (a list)"),
    "non-tensor entry": ("not_tensors", {"model_name": "scnet50"}, "entry 'fc.bias' is a str"),
    "bare without a name": ("bare", {}, "bare state_dict: name its architecture with --model"),
    "EMA asked, none there": ("no_ema", {"ema": True}, "holds no EMA weights"),
    "another model than the config's": ("no_ema", {"model_name": "sc_seresnet50"}, "config trained scnet50"),
    "class list of another length": ("two_classes", {}, "lists 2 classes but its classifier has 3"),
    "config disagrees with the head": ("five_in_config", {}, "says 5 classes but its classifier has 3"),
    "another architecture": ("resnet", {"model_name": "scnet50"}, "does not fit scnet50"),
    "unknown model": ("bare", {"model_name": "scnet51"}, "scnet51"),
    "image too small": ("no_ema", {"image_size": 96}, "minimum of 97 px"),
    "crop_pct zero": ("no_ema", {"crop_pct": 0.0}, "crop_pct above 0"),
    "unknown interpolation": ("no_ema", {"interpolation": "lanczos"}, "'lanczos'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_is_one_line(case, bad_files):
    name, kwargs, expected = BAD[case]
    with pytest.raises(ValueError) as error:  # CheckpointError is a ValueError
        load_checkpoint(bad_files[name], **kwargs)
    message = str(error.value)
    assert expected in message and "\n" not in message, message


# --------------------------------------------------------------------------------------------------
# evaluate_checkpoint


def test_evaluate_checkpoint_with_a_crafted_classifier(training, data, tmp_path):
    real = write_real_json(tmp_path / "real.json")
    result = evaluate_checkpoint(load_checkpoint(training), data, batch_size=4, workers=0, real_labels=real)
    assert list(result) == RESULT_KEYS
    real_top1, real_images = expected_real_top1(favoured=0)
    assert (result["top1"], result["top5"], result["images"]) == (pytest.approx(top1_of(0)), 100.0, TOTAL)
    assert (result["real_top1"], result["real_images"]) == (pytest.approx(real_top1), real_images)
    assert result["skipped"] == []
    settings = ("scnet50", str(training), False, str(data), "val", 3, f"checkpoint {training}")
    assert tuple(result[k] for k in RESULT_KEYS[:7]) == settings
    assert tuple(result[k] for k in RESULT_KEYS[7:14]) == (IMAGE_SIZE, CROP_PCT, "bilinear", "none", "cpu", 4, 1)
    model = scnet.create_model("scnet50", num_classes=3)
    assert (result["params"], result["macs"]) == (scnet.count_params(model), scnet.count_macs(model, IMAGE_SIZE))
    # The EMA weights of the same file predict class 1.
    ema = evaluate_checkpoint(load_checkpoint(training, ema=True), data, batch_size=4, workers=0)
    assert (ema["top1"], ema["ema"]) == (pytest.approx(top1_of(1)), True) and "real_top1" not in ema
    # Resized and centre-cropped after the loader (data.decode=gpu's path, the CPU decoder standing in): the same.
    gpu_path = evaluate_checkpoint(
        load_checkpoint(training), data, batch_size=4, workers=0, real_labels=real, decode="gpu"
    )
    assert gpu_path["decode"] == "gpu"
    assert {k: gpu_path[k] for k in ("top1", "top5", "images", "real_top1", "skipped")} == {
        k: result[k] for k in ("top1", "top5", "images", "real_top1", "skipped")
    }


@torch.no_grad()
def test_evaluate_checkpoint_counts_what_its_model_predicts(data, tmp_path):
    # The split through the evaluation crop, normalised here: the model's inputs, computed independently.
    dataset = build_dataset(data, "val", transform=eval_transform(IMAGE_SIZE, CROP_PCT), bad_images="skip")
    images = torch.stack([dataset[i][0] for i in range(len(dataset))]).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = (images - mean) / std
    labels = torch.tensor([label for _, label in dataset.samples])

    def built(weights: dict, **options) -> torch.nn.Module:
        model = scnet.create_model("scnet50", num_classes=3, **options)
        model.load_state_dict(weights)
        return model.eval()

    # Random weights, and a bias that cancels what the r=2 model's features share on this split: its
    # predictions then follow the pixels (a random head alone predicts one class for every image).
    weights = dict(random_model().state_dict())
    r2 = built(weights, pooling_r=2)
    pooled = r2.forward_head(r2.forward_features(images), pre_logits=True)
    weights["fc.bias"] = -(pooled.mean(dim=0) @ weights["fc.weight"].T)
    hits = {r: int((built(weights, pooling_r=r)(images).argmax(dim=1) == labels).sum()) for r in (2, 4)}
    assert hits[2] != hits[4]  # so that the count below tells the r=2 model from the release's r=4

    path = tmp_path / "r2.pth"
    torch.save({"model": weights, "config": {**CONFIG, "model": {**CONFIG["model"], "pooling_r": 2}}}, path)
    result = evaluate_checkpoint(load_checkpoint(path), data, batch_size=3, workers=0)
    assert result["images"] == TOTAL
    assert result["top1"] == pytest.approx(100.0 * hits[2] / TOTAL)


def test_partial_split_is_labelled_by_the_checkpoint_classes(tmp_path):
    # Training had a b c d; the val split lacks a. The model predicts c (index 2) for everything.
    data = make_tree(tmp_path / "data" / "val", {"b": 1, "c": 3, "d": 1}).parent
    path = tmp_path / "best.pth"
    crafted = crafted_state_dict(favoured=2, num_classes=4)
    config = {**CONFIG, "model": {"name": "scnet50", "num_classes": 4}}
    torch.save({"model": crafted, "config": config}, path)
    with pytest.raises(ValueError, match="has 3 classes but the model has 4 outputs"):
        prepare_evaluation(load_checkpoint(path), data)  # without a class list the split indexes itself
    torch.save({"model": crafted, "config": config, "classes": list("abcd")}, path)
    result = evaluate_checkpoint(load_checkpoint(path), data, batch_size=4, workers=0)
    assert (result["images"], result["top1"], result["classes_from"]) == (5, pytest.approx(60.0), f"checkpoint {path}")


EVAL_BAD = {
    "no data folder": ({"data_root": "{tmp}/nodata"}, "no such data folder"),
    "batch size 0": ({"batch_size": 0}, "batch_size must be at least 1"),
    "unknown amp": ({"amp": "fp8"}, "'fp8'"),
    "class outside the checkpoint's": ({"data_root": "{four}"}, "class folder 'd' is not in the classes of"),
    "missing real.json": ({"real_labels": "{tmp}/real.json"}, "real.json"),
}


@pytest.mark.parametrize("case", list(EVAL_BAD))
def test_bad_evaluation_input_is_one_line(case, training, data, tmp_path):
    four = make_tree(tmp_path / "four" / "val", {"a": 1, "b": 1, "c": 1, "d": 1}).parent
    arguments, expected = EVAL_BAD[case]
    names = {"tmp": tmp_path, "four": four}
    kwargs = {"data_root": data} | {k: v.format(**names) if isinstance(v, str) else v for k, v in arguments.items()}
    loaded = load_checkpoint(training)
    with pytest.raises((ValueError, OSError)) as error:
        prepare_evaluation(loaded, **kwargs)
    message = str(error.value)
    assert expected in message and "\n" not in message, message
