"""The config system: every shipped YAML loads, inheritance and overrides behave, errors are one useful line."""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from pathlib import Path

import pytest

import scnet
from scnet.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    describe,
    dump_config,
    format_config,
    load_config,
)

from ..utils import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path | None = None, overrides: tuple[str, ...] = ()) -> str:
    """The message of the ConfigError that loading raises; it must be exactly one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def dotted_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """Every leaf key of the schema, walked here independently of scnet.config.schema_keys."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f))
    return out


# --------------------------------------------------------------------------------------------------
# The shipped configs


def test_configs_found():
    names = {p.relative_to(REPO_ROOT / "configs").as_posix() for p in CONFIGS}
    expected = {
        "_base_/recipe_authors.yaml",
        "_base_/recipe_modern.yaml",
        "_base_/recipe_resnext.yaml",
        "_base_/data_imagenet.yaml",
        "imagenet/scnet50.yaml",
        "imagenet/scnet50_v1d.yaml",
        "imagenet/scnet101.yaml",
        "imagenet/resnet50.yaml",
        "quickstart.yaml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT / "configs").as_posix())
def test_every_config_loads(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.name in scnet.list_models()
    # The dumped form of every shipped config loads back to the same thing.
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO_ROOT / "configs").as_posix())
def test_every_config_loads_for_a_one_epoch_trial(path: Path):
    # Warm-up as long as the run (or longer) is accepted, as in timm: the trainer warns instead.
    cfg = load_config(path, ["train.epochs=1"])
    assert cfg.train.epochs == 1
    assert load_config(path, ["train.epochs=1", "schedule.warmup_epochs=5"]).schedule.warmup_epochs == 5


def test_removed_demo_key_says_what_to_write(tmp_path: Path):
    hint = "data.demo: removed; write data.root: demo to train on the built-in demo set"
    old = write(tmp_path, "old.yaml", "data:\n  root: data/demo\n  demo: true\n")
    assert error_of(old).startswith(f"{old}: {hint}")  # the file that holds it, the key, what to write
    quickstart = REPO_ROOT / "configs/quickstart.yaml"
    assert error_of(quickstart, ("data.demo=false",)).startswith(f"command line: {hint}")
    # Any root is accepted at load time (a path is checked when the run starts, where it is used).
    assert load_config(quickstart, ["data.root=/data/imagnet"]).data.root == "/data/imagnet"


def test_defaults_are_the_authors_recipe():
    assert load_config(REPO_ROOT / "configs/_base_/recipe_authors.yaml") == Config()
    cfg = Config()
    assert (cfg.train.epochs, cfg.optim.name, cfg.optim.lr, cfg.optim.lr_base_batch) == (100, "sgd", 0.1, 256)
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.schedule.name) == (0.9, 1e-4, "step")
    assert (cfg.schedule.milestones, cfg.schedule.gamma, cfg.train.label_smoothing) == ([30, 60, 90], 0.1, 0.1)
    assert (cfg.data.image_size, cfg.data.crop_pct, cfg.data.scale, cfg.data.hflip) == (224, 0.875, (0.08, 1.0), 0.5)


def test_other_recipes():
    modern = load_config(REPO_ROOT / "configs/_base_/recipe_modern.yaml")
    assert (modern.schedule.name, modern.schedule.warmup_epochs, modern.train.ema) == ("cosine", 5, True)
    assert (modern.data.mixup, modern.data.cutmix, modern.data.randaugment) == (0.2, 1.0, (2, 9))
    assert (modern.data.random_erasing, modern.model.drop_path_rate, modern.optim.no_decay_norm_bias) == (
        0.25,
        0.05,
        True,
    )
    resnext = load_config(REPO_ROOT / "configs/_base_/recipe_resnext.yaml")
    assert (resnext.train.epochs, resnext.schedule.milestones, resnext.train.label_smoothing) == (90, [30, 60], 0.0)
    assert (resnext.data.color_jitter, resnext.data.lighting, resnext.optim.weight_decay) == (0.4, 0.1, 1e-4)


def test_quickstart_fits_a_cpu():
    cfg = load_config(REPO_ROOT / "configs/quickstart.yaml")
    assert (cfg.data.root, cfg.model.num_classes) == ("demo", 10)  # the built-in demo set, asked for by name
    assert cfg.data.image_size >= 97  # SCNet's minimum input
    assert (cfg.data.batch_size, cfg.data.workers, cfg.model.channels_last) == (16, 2, True)
    # bf16 only where the CPU computes it natively: emulated, a step of SCNet-50 is ~10x slower than fp32.
    assert cfg.train.amp == "auto"
    assert (cfg.optim.name, cfg.peak_lr) == ("adamw", pytest.approx(3e-3))
    assert cfg.train.epochs <= 10 and cfg.output_dir == "runs/quickstart" and cfg.train.curves


# --------------------------------------------------------------------------------------------------
# Inheritance


def test_two_level_chain_merges_key_by_key(tmp_path: Path):
    write(tmp_path, "bases/grand.yaml", "optim: {lr: 0.5, momentum: 0.8}\nschedule: {milestones: [10, 20, 30]}\n")
    write(tmp_path, "bases/parent.yaml", "_base_: grand.yaml\noptim: {momentum: 0.7}\ntrain: {epochs: 50}\n")
    write(tmp_path, "bases/other.yaml", "train: {epochs: 40, seed: 3}\n")
    child = write(
        tmp_path,
        "exp/child.yaml",
        """
        _base_: [../bases/parent.yaml, ../bases/other.yaml]
        optim:
          weight_decay: 5.0e-5
        schedule:
          milestones: [5]
        """,
    )
    cfg = load_config(child)
    assert cfg.optim.lr == 0.5  # from the grandparent, through the parent
    assert cfg.optim.momentum == 0.7  # the parent overrides the grandparent, siblings kept
    assert cfg.optim.weight_decay == 5e-5  # the file's own key on top
    assert cfg.train.epochs == 40 and cfg.train.seed == 3  # later base wins
    assert cfg.schedule.milestones == [5]  # lists replace, they do not merge
    assert cfg.optim.nesterov is False  # untouched keys keep the schema default


def test_base_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path, "a/base.yaml", "train: {epochs: 7}\n")
    child = write(tmp_path, "a/b/child.yaml", "_base_: ../base.yaml\n")
    monkeypatch.chdir(tmp_path / "a" / "b")
    assert load_config("child.yaml").train.epochs == 7
    monkeypatch.chdir(tmp_path)
    assert load_config(child).train.epochs == 7


def test_delete_replaces_the_base_section(tmp_path: Path):
    write(tmp_path, "base.yaml", "optim: {lr: 0.5, momentum: 0.5, nesterov: true}\ntrain: {epochs: 9}\n")
    merged = write(tmp_path, "merged.yaml", "_base_: base.yaml\noptim: {weight_decay: 0.0}\n")
    replaced = write(tmp_path, "replaced.yaml", "_base_: base.yaml\noptim: {_delete_: true, weight_decay: 0.0}\n")
    cfg = load_config(merged)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.5, 0.5, True, 0.0)
    cfg = load_config(replaced)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.weight_decay) == (0.1, 0.9, False, 0.0)
    assert cfg.train.epochs == 9  # other sections still merge


def test_cycle_is_an_error_naming_the_files(tmp_path: Path):
    a = write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    message = error_of(a)
    assert "cycle" in message and "a.yaml -> " in message and "b.yaml" in message
    assert "cycle" in error_of(write(tmp_path, "self.yaml", "_base_: self.yaml\n"))


def test_diamond_is_not_a_cycle(tmp_path: Path):
    write(tmp_path, "root.yaml", "train: {epochs: 3}\n")
    write(tmp_path, "left.yaml", "_base_: root.yaml\n")
    write(tmp_path, "right.yaml", "_base_: root.yaml\n")
    assert load_config(write(tmp_path, "top.yaml", "_base_: [left.yaml, right.yaml]\n")).train.epochs == 3


def test_file_errors(tmp_path: Path):
    assert "no such config file" in error_of(tmp_path / "missing.yaml")
    message = error_of(write(tmp_path, "child.yaml", "_base_: nowhere.yaml\n"))
    assert "child.yaml" in message and "nowhere.yaml" in message
    message = error_of(write(tmp_path, "broken.yaml", "optim:\n  lr: [0.1\n"))
    assert "broken.yaml" in message and "invalid YAML" in message
    assert load_config(write(tmp_path, "empty.yaml", "")) == Config()
    message = error_of(write(tmp_path, "dotted.yaml", "optim.lr: 0.2\n"))
    assert "optim.lr" in message and "nest" in message


# --------------------------------------------------------------------------------------------------
# Overrides and types


def test_overrides_are_typed():
    cfg = load_config(
        None,
        [
            "optim.lr=1",
            "train.epochs=1",
            "data.root=/data/imagenet",
            "model.pretrained=null",
            "data.scale=[0.25,1]",
            "data.randaugment=[2, 9]",
            "schedule.milestones=[10,20]",
            "train.amp=bf16",
            "train.ema=true",
            "optim.clip_grad=5",
        ],
    )
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float  # int promoted to float
    assert cfg.train.epochs == 1 and cfg.data.root == "/data/imagenet" and cfg.model.pretrained is None
    assert cfg.data.scale == (0.25, 1.0) and type(cfg.data.scale) is tuple
    assert cfg.data.randaugment == (2, 9) and cfg.schedule.milestones == [10, 20]
    assert (cfg.train.amp, cfg.train.ema, cfg.optim.clip_grad) == ("bf16", True, 5.0)


def test_override_value_forms():
    cfg = load_config(None, ["model.pretrained=w.pth", "optim.clip_grad=1.0", "data.randaugment=2,9"])
    assert (cfg.model.pretrained, cfg.data.randaugment) == ("w.pth", (2, 9))
    cfg = load_config(None, ["model.pretrained=none", "optim.clip_grad=None", "output_dir=1.10", "data.root=a:b"])
    assert (cfg.model.pretrained, cfg.optim.clip_grad) == (None, None)
    assert (cfg.output_dir, cfg.data.root) == ("1.10", "a:b")  # str keys keep the text as typed
    assert load_config(None, ["optim.lr=0.1", "optim.lr=0.3"]).optim.lr == 0.3  # later wins


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs=1.5", "expected int"),
        ("train.epochs=ten", "expected int"),
        ("train.ema=1", "expected bool"),
        ("optim.lr=fast", "expected float"),
        ("optim.lr=true", "expected float"),
        ("data.scale=[0.25]", "needs 2 items"),
        ("data.randaugment=[2, 9.5]", "expected tuple[int, int] | None"),
        ("schedule.milestones=[10, x]", "expected list[int]"),
        ("train.amp=fp32", "none|bf16|fp16"),
        ("optim.name=adam", "sgd|adamw"),
        ("data.interpolation=nearest", "bilinear|bicubic"),
        ("model=scnet50", "is a section"),
    ],
)
def test_bad_override_type(override: str, expected: str):
    message = error_of(overrides=(override,))
    key = override.partition("=")[0]
    assert message.startswith(f"command line: {key}: ") and expected in message


def test_pretrained_is_true_a_path_or_null(tmp_path: Path):
    """model.pretrained: true (the release's weights, downloaded), a file, or null/false; nothing else."""
    assert load_config(None, ["model.pretrained=true"]).model.pretrained is True
    assert load_config(None, ["model.pretrained=false"]).model.pretrained is False
    assert load_config(None, ["model.pretrained=runs/a/best.pth"]).model.pretrained == "runs/a/best.pth"
    assert load_config(write(tmp_path, "t.yaml", "model: {pretrained: true}\n")).model.pretrained is True
    assert (
        load_config(write(tmp_path, "q.yaml", "model: {pretrained: '1'}\n")).model.pretrained == "1"
    )  # quoted: a name
    for override in ("model.pretrained=1", "model.pretrained=0.5"):
        message = error_of(overrides=(override,))
        assert message.startswith("command line: model.pretrained: expected bool | str | None, got ")
        assert "neither true/false nor a path" in message
    message = error_of(write(tmp_path, "n.yaml", "model: {pretrained: 1}\n"))
    assert "n.yaml: model.pretrained: expected bool | str | None, got 1 (int)" in message
    message = error_of(write(tmp_path, "l.yaml", "model: {pretrained: [a.pth]}\n"))
    assert "l.yaml: model.pretrained: expected bool | str | None, got [a.pth] (list)" in message


def test_unknown_keys_suggest_the_closest(tmp_path: Path):
    assert error_of(overrides=("optim.lrr=0.2",)) == "command line: optim.lrr: unknown key; did you mean optim.lr?"
    assert "did you mean train.epochs?" in error_of(overrides=("epochs=3",))
    assert "did you mean optim.lr?" in error_of(overrides=("train.lr=3",))
    assert "did you mean data.batch_size?" in error_of(overrides=("data.batchsize=3",))
    assert "did you mean optim?" in error_of(overrides=("optimizer.lr=3",))
    assert "override is key=value" in error_of(overrides=("optim.lr",))
    path = write(tmp_path, "typo.yaml", "optim:\n  lr: 0.1\n  weight_decai: 1.0e-4\n")
    message = error_of(path)
    assert "typo.yaml" in message and "optim.weight_decai" in message and "did you mean optim.weight_decay?" in message


def test_errors_name_the_file_that_set_the_key(tmp_path: Path):
    write(tmp_path, "base.yaml", "train: {epochs: many}\n")
    message = error_of(write(tmp_path, "child.yaml", "_base_: base.yaml\noptim: {lr: 0.2}\n"))
    assert "base.yaml: train.epochs: expected int" in message and "child.yaml" not in message
    # An override of the bad key replaces it: the config is valid again.
    assert load_config(tmp_path / "child.yaml", ["train.epochs=3"]).train.epochs == 3
    message = error_of(write(tmp_path, "typed.yaml", "data:\n  scale: 0.5\n"))
    assert "typed.yaml: data.scale: expected tuple[float, float], got 0.5 (float)" in message
    message = error_of(write(tmp_path, "quoted.yaml", "data:\n  scale: '[0.2, 1'\n"))
    assert "quoted.yaml: data.scale: expected tuple[float, float]" in message


def test_yaml_file_values(tmp_path: Path):
    path = write(tmp_path, "values.yaml", "optim: {weight_decay: 1e-4, lr: 1}\nmodel: {pretrained: ~}\noutput_dir: 7\n")
    cfg = load_config(path)
    assert cfg.optim.weight_decay == 1e-4  # YAML 1.1 reads 1e-4 as a string; a float key still takes it
    assert cfg.optim.lr == 1.0 and cfg.model.pretrained is None and cfg.output_dir == "7"


# --------------------------------------------------------------------------------------------------
# Semantic checks


@pytest.mark.parametrize(
    "override",
    [
        "data.batch_size=0",
        "data.workers=-1",
        "train.epochs=0",
        "train.accum_steps=0",
        "train.label_smoothing=1.0",
        "train.label_smoothing=-0.1",
        "data.crop_pct=0",
        "data.crop_pct=1.2",
        "data.scale=[0.9,0.1]",
        "data.scale=[0,1]",
        "data.ratio=[1.3,0.7]",
        "schedule.milestones=[60,30]",
        "schedule.milestones=[30,30]",
        "data.image_size=16",
    ],
)
def test_semantic_checks(override: str):
    key = override.partition("=")[0]
    assert error_of(overrides=(override,)).startswith(f"command line: {key}: ")


def test_fine_tuning_keys():
    finetune = load_config(REPO_ROOT / "configs/finetune.yaml")
    assert (finetune.model.num_classes, finetune.model.freeze, finetune.optim.backbone_lr_scale) == ("auto", [], 1.0)
    cfg = load_config(None, ["model.freeze=[stem,layer1]", "optim.backbone_lr_scale=0.1", "optim.layer_decay=0.7"])
    assert (cfg.model.freeze, cfg.optim.backbone_lr_scale, cfg.optim.layer_decay) == (["stem", "layer1"], 0.1, 0.7)
    assert load_config(None, ["model.freeze=stem"]).model.freeze == ["stem"]  # one name: a list of one
    assert load_config(None, ["model.freeze=stem,layer1"]).model.freeze == ["stem", "layer1"]
    assert load_config(None, ["model.num_classes=7"]).model.num_classes == 7
    # A converted timm model has parts of its own: checked when it is built.
    assert load_config(None, ["model.name=vgg11", "model.convert_sc=true", "model.freeze=features"]).model.freeze


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.num_classes=aut", "model.num_classes: expected int | auto, got 'aut' (str)"),
        ("model.num_classes=0", "model.num_classes: must be >= 1 or auto, got 0"),
        ("model.freeze=[stem,layr1]", "model.freeze: scnet50 has no part 'layr1'; did you mean layer1?"),
        ("model.freeze=[head]", "model.freeze: scnet50 has no part 'head'; choose from stem, layer1, layer2, layer3"),
        ("model.freeze=[stem,stem]", "model.freeze: names a part twice: ['stem', 'stem']"),
        ("optim.backbone_lr_scale=0", "optim.backbone_lr_scale: must be > 0 (model.freeze stops parts from training)"),
        ("optim.layer_decay=1.5", "optim.layer_decay: must be in (0, 1] or null, got 1.5"),
    ],
)
def test_fine_tuning_keys_refuse_bad_values_in_one_line(override: str, expected: str):
    assert error_of(overrides=(override,)).startswith(f"command line: {expected}")


def test_semantic_error_names_the_file(tmp_path: Path):
    message = error_of(write(tmp_path, "bad.yaml", "data:\n  batch_size: 0\n"))
    assert "bad.yaml: data.batch_size: must be >= 1, got 0" in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_batch_arithmetic():
    cfg = load_config(None, ["data.batch_size=512", "train.accum_steps=2"])
    assert cfg.peak_lr == pytest.approx(0.2)
    assert cfg.micro_batch_size(world_size=4) == 64
    with pytest.raises(ConfigError, match="data.batch_size"):
        cfg.micro_batch_size(world_size=3)


# --------------------------------------------------------------------------------------------------
# Round trip, printing and describe()


def test_round_trip(tmp_path: Path):
    cfg = load_config(
        None,
        [
            "data.randaugment=[2,9]",
            "model.pretrained=w.pth",
            "optim.clip_grad=2.5",
            "data.ratio=[0.5,2]",
            "output_dir=1.10",
        ],
    )
    path = dump_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg
    assert load_config(dump_config(Config(), tmp_path / "defaults.yaml")) == Config()
    # Keys come out in schema order, sections as nested mappings, tuples as plain lists.
    data = config_to_dict(cfg)
    assert list(data) == [f.name for f in dataclasses.fields(Config)]
    assert list(data["data"]) == [f.name for f in dataclasses.fields(cfg.data)]
    assert data["data"]["randaugment"] == [2, 9] and data["data"]["scale"] == [0.08, 1.0]
    assert "scale: [0.08, 1.0]" in format_config(cfg)


def test_apply_overrides():
    cfg = apply_overrides(Config(), ["train.epochs=3", "optim.lr=0.4"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.data.batch_size) == (3, 0.4, 256)
    assert "command line: train.epochz" in str(
        pytest.raises(ConfigError, apply_overrides, cfg, ["train.epochz=1"]).value
    )


def test_describe_documents_every_key():
    text = describe()
    keys = dotted_keys()
    assert len(keys) > 50
    lines = text.splitlines()
    for key, f in keys:
        assert f.metadata.get("help", "").strip(), f"{key} has no help text"
        entry = [i for i, line in enumerate(lines) if line.startswith(f"{key} (")]
        assert len(entry) == 1, f"{key} not listed once in describe()"
        assert lines[entry[0] + 1].strip() == f.metadata["help"]
    assert "data.scale (tuple[float, float], default: [0.08, 1.0])" in text
    assert "train.amp (none|bf16|fp16|auto, default: none)" in text
    assert "model.pretrained (bool | str | None, default: null)" in text
