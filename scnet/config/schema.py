"""The typed schema of a training run: what every key means, its type and default, and what a valid config is.

Defaults are the SCNet authors' recipe (the PyTorch ImageNet example with 100 epochs and label smoothing
0.1, see ``configs/_base_/recipe_authors.yaml``). Every field carries its help text in
``field(metadata={"help": ...})``, so :func:`describe` and the error messages are generated from the same
place the types are declared, and an undocumented key cannot exist (a test walks the schema).

This module only declares and checks; reading YAML and command-line overrides is ``scnet.config.load``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

# Choices are Literal types: the loader validates them and describe() lists them, from this one declaration.
OptimizerName = Literal["sgd", "adamw"]
ScheduleName = Literal["step", "cosine"]
AmpMode = Literal["none", "bf16", "fp16", "auto"]
Interpolation = Literal["bilinear", "bicubic"]
DecodeWhere = Literal["auto", "cpu", "gpu"]
PoolType = Literal["avg", "max"]
Upsample = Literal["nearest", "bilinear"]
Auto = Literal["auto"]

# What model.freeze can name in the zoo's models (SC models and their timm ResNet baselines), in network order.
FREEZABLE = ("stem", "layer1", "layer2", "layer3", "layer4")


class ConfigError(ValueError):
    """A bad config, reported in one line: ``<source>: <dotted key>: <problem>``.

    ``source`` is the YAML file the value came from, ``"command line"`` for an override, or
    ``"default"`` for a schema default that a semantic check rejects in combination with other keys.
    """

    def __init__(self, key: str, problem: str, source: str = "default") -> None:
        self.key = key
        self.problem = problem
        self.source = source
        # One line whatever the input was: a value pasted with a newline must not split the message.
        text = f"{source}: {key}: {problem}" if key else f"{source}: {problem}"
        super().__init__(re.sub(r"\s*\n\s*", " ", text))


def _key(default: Any, help: str) -> Any:
    """A schema key: its default and its help text (read back by :func:`describe`)."""
    if isinstance(default, list):
        # Each Config gets its own list, so one run's edits cannot leak into the defaults.
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _section(cls: type, help: str) -> Any:
    """A nested section of the schema."""
    return field(default_factory=cls, metadata={"help": help})


@dataclass(frozen=True)
class ModelConfig:
    """The network: a zoo name and its build options (``scnet.create_model``)."""

    name: str = _key(
        "scnet50",
        "model name, one of scnet.list_models() (SC models and their timm baselines); with convert_sc, any timm "
        "model that is not an SC model",
    )
    num_classes: int | Auto = _key(
        1000,
        "classifier outputs; auto = the training split's number of class folders, counted at start (the run's "
        "config.yaml and checkpoints hold the number); a pretrained file with another count loads all but the head",
    )
    pretrained: bool | str | None = _key(
        None,
        "weights to start from: true = the original release's for model.name (scnet50, scnet50_v1d, scnet101), "
        "downloaded once into torch.hub's cache ($TORCH_HOME/hub/checkpoints) and checked against the hash in "
        "the file name; or a local weights file (a .pth of the release, .safetensors, or a scnet checkpoint); "
        "null or false = random init",
    )
    freeze: list[str] = _key(
        [],
        "parts of the network not trained, e.g. [stem, layer1]: stem (conv1, bn1) and the stages layer1-layer4 "
        "(any timm model's stem and top-level modules with model.convert_sc); their parameters get no gradient "
        "and no optimizer state, their BatchNorms normalise with the loaded running statistics and never update "
        "them (eval mode, as torchvision's and timm's frozen-BN fine-tuning); the classifier always trains; "
        "[] = train everything",
    )
    drop_path_rate: float = _key(
        0.0, "stochastic depth rate of the last block (linearly increasing over blocks); 0 = off"
    )
    zero_init_last: bool = _key(False, "zero-init each residual block's last BN gamma (off in the authors' recipe)")
    convert_sc: bool = _key(
        False,
        "replace every eligible 3x3 convolution of the model (plain, groups 1, dilation 1, padding 1, even channel "
        "counts) by a self-calibrated convolution (scnet.layers.convert_to_sc) with the SCConv options below, "
        "BatchNorm inside when the network has BatchNorm; model.name may then be any timm model but an SC one",
    )
    # SCConv's calibration, k3(x) * sigmoid(x + up(k2(pool_r(x)))): the ablation table's options. The defaults are
    # the release's; none of them changes the state_dict, so a checkpoint's config must say which ones it used.
    pooling_r: int = _key(4, "SC models and convert_sc: SCConv's down-sampling factor r (the release: 4)")
    pool_type: PoolType = _key(
        "avg", "SC models and convert_sc: SCConv's down-sampling pool, avg or max (the release: avg)"
    )
    pool_ceil_mode: bool = _key(
        False,
        "SC models and convert_sc: ceil instead of floor in SCConv's pool, so a map smaller than r keeps one "
        "(partial) window; needed for r=8 at 224 px, where floor leaves nothing of the 7x7 last map (the release "
        "floors)",
    )
    calib_identity: bool = _key(
        True,
        "SC models and convert_sc: keep the identity term inside the sigmoid, sigmoid(x + up(...)) (the release: true)",
    )
    upsample: Upsample = _key(
        "nearest",
        "SC models and convert_sc: up-sampling of the calibration context (the release's code: nearest; the "
        "paper: bilinear)",
    )
    channels_last: bool = _key(
        True, "NHWC memory format for model and inputs (faster convs on tensor-core GPUs; off on CPU)"
    )
    compile: bool = _key(False, "wrap the model in torch.compile")
    sync_bn: bool = _key(
        False, "synchronise BatchNorm statistics across processes (the authors' recipe uses per-GPU BN)"
    )


@dataclass(frozen=True)
class DataConfig:
    """Where the images are, how they are loaded, and the augmentations (``scnet.data``)."""

    root: str = _key(
        "data/imagenet",
        "folder with <train_split>/ and <val_split>/ (ImageFolder trees or shards), relative to the working "
        "directory; it must exist. The name demo (exactly) is the built-in demo set, drawn at data/demo on first use",
    )
    train_split: str = _key("train", "training subfolder of root")
    val_split: str = _key("val", "evaluation subfolder of root")
    image_size: int = _key(224, "training crop and evaluation centre-crop side, in pixels")
    batch_size: int = _key(
        256,
        "GLOBAL batch per optimizer step, split across processes and accum_steps; "
        "lr is scaled by batch_size / optim.lr_base_batch",
    )
    workers: int = _key(8, "data-loading worker processes per training process")
    decode: DecodeWhere = _key(
        "auto",
        "where JPEGs are decoded: cpu (in the workers), gpu (workers read the bytes and draw each crop; the batch is "
        "decoded with nvjpeg, cut, resized and flipped on the GPU; PNG, greyscale, CMYK and progressive files are "
        "decoded in the workers, counted per epoch), auto (gpu on a CUDA device whose torchvision decodes JPEG "
        "there, else cpu). "
        "On a CPU device gpu runs the same code with the CPU decoder (how it is tested)",
    )
    jpeg_draft: bool = _key(
        False,
        "data.decode=cpu, training: decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when its crop "
        "is at least that many times larger than image_size; pays only for photos several times larger than the "
        "crop (see BENCHMARKS.md)",
    )
    crop_pct: float = _key(
        0.875, "evaluation: resize the short side to image_size / crop_pct (256 for 224), then centre-crop"
    )
    interpolation: Interpolation = _key("bilinear", "resampling filter for resize, crop and RandAugment")
    scale: tuple[float, float] = _key((0.08, 1.0), "RandomResizedCrop area range, as fractions of the image")
    ratio: tuple[float, float] = _key((0.75, 1.3333333), "RandomResizedCrop aspect-ratio range")
    hflip: float = _key(0.5, "horizontal flip probability")
    color_jitter: float = _key(0.0, "brightness/contrast/saturation jitter strength (0.4 in fb.resnet.torch); 0 = off")
    lighting: float = _key(0.0, "AlexNet PCA lighting noise, alphastd (0.1 in fb.resnet.torch); 0 = off")
    randaugment: tuple[int, int] | None = _key(None, "RandAugment [num_ops, magnitude], e.g. [2, 9]; null = off")
    random_erasing: float = _key(
        0.0, "probability of timm's per-image random erasing (on the device, after normalising)"
    )
    mixup: float = _key(0.0, "mixup alpha; 0 = off")
    cutmix: float = _key(0.0, "cutmix alpha; 0 = off (with both on, each batch uses one of them)")
    strict: bool = _key(
        False,
        "a corrupt image is an error naming the file, instead of being replaced by another sample (training) "
        "or skipped (evaluation)",
    )


@dataclass(frozen=True)
class OptimConfig:
    """The optimizer."""

    name: OptimizerName = _key("sgd", "optimizer")
    lr: float = _key(0.1, "peak learning rate for a global batch of lr_base_batch (scaled linearly to data.batch_size)")
    lr_base_batch: int = _key(256, "the global batch that lr is given for")
    momentum: float = _key(0.9, "SGD momentum")
    nesterov: bool = _key(False, "Nesterov momentum (SGD only; fb.resnet.torch uses it)")
    weight_decay: float = _key(1e-4, "L2 weight decay (adamw: decoupled)")
    no_decay_norm_bias: bool = _key(False, "exclude normalisation weights and all biases from weight decay")
    backbone_lr_scale: float = _key(
        1.0,
        "lr multiplier of every parameter but the classifier's (e.g. 0.1 to refine pretrained features while "
        "the new head learns at the full lr); the schedule (warm-up, decay, min_lr) scales each group alike",
    )
    layer_decay: float | None = _key(
        None,
        "timm's layer-wise lr decay: a parameter's lr is multiplied by layer_decay ** (its depth from the head, "
        "counted in blocks by the model's group_matcher: head 1, last block layer_decay, ..., stem the least); "
        "multiplies with backbone_lr_scale; null = off",
    )
    clip_grad: float | None = _key(None, "clip the global gradient norm to this value; null = no clipping")


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule, stepped per iteration."""

    name: ScheduleName = _key("step", "step: multiply by gamma at each milestone; cosine: cosine decay to min_lr")
    milestones: list[int] = _key(
        [30, 60, 90], "step: epochs at which the lr is multiplied by gamma (ignored by cosine)"
    )
    gamma: float = _key(0.1, "step: factor applied at each milestone")
    warmup_epochs: int = _key(
        0,
        "linear warmup from warmup_lr to the peak lr over this many epochs; 0 = none "
        "(as long as train.epochs or longer: the whole run is warm-up, with a warning)",
    )
    warmup_lr: float = _key(1e-5, "lr at the start of warmup (absolute, not scaled by batch size)")
    min_lr: float = _key(0.0, "cosine: final lr (absolute, not scaled by batch size)")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: length, precision, regularisation, evaluation, logging and checkpoints."""

    epochs: int = _key(100, "training epochs")
    seed: int = _key(0, "seed of weights init, data order and augmentations")
    deterministic: bool = _key(
        False, "deterministic cuDNN/cuBLAS algorithms (slower; bitwise repeatable on one machine)"
    )
    amp: AmpMode = _key(
        "none",
        "autocast precision: none = fp32/TF32, bf16, or fp16 with a gradient scaler; auto = bf16 where the device "
        "computes it natively (a GPU with bf16, a CPU with AVX-512 BF16 or AMX), none elsewhere (an AVX2 CPU "
        "emulates bf16, ~10x slower than fp32); the run's config.yaml and checkpoints hold the choice",
    )
    accum_steps: int = _key(
        1, "gradient accumulation: micro-batches per optimizer step (the global batch stays data.batch_size)"
    )
    label_smoothing: float = _key(0.1, "label smoothing of the cross-entropy loss")
    ema: bool = _key(False, "keep an exponential moving average of the weights, evaluated alongside the model")
    ema_decay: float = _key(0.9998, "EMA decay per optimizer step")
    eval_every: int = _key(1, "evaluate every this many epochs (and always after the last)")
    log_every: int = _key(20, "log training metrics every this many optimizer steps")
    checkpoint_every_steps: int = _key(0, "also checkpoint every this many optimizer steps; 0 = only at epoch ends")
    skip_nonfinite: int = _key(
        0,
        "optimizer steps with a NaN/inf loss to skip (weights and BN statistics left as before the step, counted "
        "as nonfinite_steps in metrics.jsonl) before the run stops; 0 = stop at the first",
    )
    tensorboard: bool = _key(True, "write TensorBoard event files to output_dir")
    curves: bool = _key(
        True,
        "at the end of the run, draw the loss and accuracy curves from metrics.jsonl to output_dir/curves.png "
        "(needs matplotlib, the plot extra; without it one line says how to get the figure)",
    )
    dist_timeout: int = _key(
        1800,
        "multi-process runs: seconds a process waits for the others (start-up, each collective) before it stops "
        "with an error naming the lost peer, instead of hanging when one died or hangs",
    )


@dataclass(frozen=True)
class Config:
    """A whole training run."""

    output_dir: str = _key(
        "runs/default", "folder for checkpoints, logs, TensorBoard events and the resolved config.yaml"
    )
    model: ModelConfig = _section(ModelConfig, "the network")
    data: DataConfig = _section(DataConfig, "data and augmentation")
    optim: OptimConfig = _section(OptimConfig, "the optimizer")
    schedule: ScheduleConfig = _section(ScheduleConfig, "the learning-rate schedule")
    train: TrainConfig = _section(TrainConfig, "the training loop")

    @property
    def peak_lr(self) -> float:
        """``optim.lr`` scaled linearly from ``optim.lr_base_batch`` to the global ``data.batch_size``."""
        return self.optim.lr * self.data.batch_size / self.optim.lr_base_batch

    def micro_batch_size(self, world_size: int = 1) -> int:
        """Images per process per forward pass: ``data.batch_size / (world_size * train.accum_steps)``.

        Raises:
            ConfigError: the global batch does not split evenly (the effective batch, and with it the
                scaled lr, would silently differ from the recipe's).
        """
        parts = world_size * self.train.accum_steps
        if world_size < 1 or self.data.batch_size % parts:
            raise ConfigError(
                "data.batch_size",
                f"the global batch {self.data.batch_size} does not split into {world_size} process(es) "
                f"x {self.train.accum_steps} accumulation step(s)",
            )
        return self.data.batch_size // parts


@dataclass(frozen=True)
class KeyInfo:
    """One leaf key of the schema, as :func:`schema_keys` lists it."""

    key: str  # dotted, e.g. "optim.lr"
    type: Any  # the resolved type hint, e.g. float, tuple[float, float], Literal["sgd", "adamw"]
    default: Any
    help: str


def is_section(tp: Any) -> bool:
    """True for a nested dataclass (a section such as ``optim``), false for a leaf type."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def schema_keys(cls: type = Config, prefix: str = "") -> Iterator[KeyInfo]:
    """Every leaf key of the schema in declaration order, depth first."""
    # get_type_hints resolves the string annotations that `from __future__ import annotations` leaves.
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if is_section(tp):
            yield from schema_keys(tp, f"{prefix}{f.name}.")
        else:
            yield KeyInfo(f"{prefix}{f.name}", tp, getattr(defaults, f.name), f.metadata.get("help", ""))


def sections(cls: type = Config) -> dict[str, type]:
    """Top-level section name -> its dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if is_section(hints[f.name])}


def type_name(tp: Any) -> str:
    """A short, readable name for a schema type: ``float``, ``str | None``, ``tuple[int, int]``, ``sgd|adamw``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin in (tuple, list):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def yaml_value(value: Any) -> str:
    """A value as one would write it in YAML or a ``key=value`` override (``null``, ``[0.08, 1.0]``)."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


def describe() -> str:
    """Every key of the schema, one entry per dotted key: ``key (type, default: value)`` then its help."""
    lines = []
    section_names = sections()
    current = None
    for info in schema_keys():
        head = info.key.split(".")[0] if "." in info.key else None
        if head != current and head is not None:
            doc = (section_names[head].__doc__ or "").strip()
            lines += ["", f"[{head}] {doc}"]
        current = head
        lines.append(f"{info.key} ({type_name(info.type)}, default: {yaml_value(info.default)})")
        lines.append(f"    {info.help}")
    return "\n".join(lines).strip() + "\n"


def _freeze_problem(m: ModelConfig) -> str | None:
    """What is wrong with ``model.freeze``: a part named twice, or one the zoo's models do not have (a timm model
    converted with ``convert_sc`` has its own parts, checked when it is built)."""
    if len(set(m.freeze)) != len(m.freeze):
        return f"names a part twice: {m.freeze}"
    unknown = [] if m.convert_sc else [part for part in m.freeze if part not in FREEZABLE]
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], FREEZABLE, n=1)
    hint = f"did you mean {close[0]}?" if close else f"choose from {', '.join(FREEZABLE)}"
    return f"{m.name} has no part {unknown[0]!r}; {hint}"


def check(cfg: Config) -> list[tuple[str, str]]:
    """Semantic problems of a well-typed config, as ``(dotted key, problem)``; empty when valid.

    Types are the loader's job; this catches values that would crash or silently misbehave later
    (a zero batch, a label smoothing of 1, an inverted crop range). The minimum image size of a given
    model is checked where the model is built.
    """
    problems: list[tuple[str, str]] = []

    def need(ok: bool, key: str, problem: str) -> None:
        if not ok:
            problems.append((key, problem))

    m, d, o, s, t = cfg.model, cfg.data, cfg.optim, cfg.schedule, cfg.train
    need(bool(cfg.output_dir.strip()), "output_dir", "must not be empty")
    need(bool(m.name.strip()), "model.name", "must not be empty")
    need(
        m.num_classes == "auto" or m.num_classes >= 1, "model.num_classes", f"must be >= 1 or auto, got {m.num_classes}"
    )
    freeze_problem = _freeze_problem(m)
    need(freeze_problem is None, "model.freeze", freeze_problem or "")
    need(0.0 <= m.drop_path_rate < 1.0, "model.drop_path_rate", f"must be in [0, 1), got {m.drop_path_rate}")
    need(m.pooling_r >= 1, "model.pooling_r", f"must be >= 1, got {m.pooling_r}")

    need(d.image_size >= 32, "data.image_size", f"must be >= 32, got {d.image_size}")
    need(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
    need(d.workers >= 0, "data.workers", f"must be >= 0, got {d.workers}")
    need(0.0 < d.crop_pct <= 1.0, "data.crop_pct", f"must be in (0, 1], got {d.crop_pct}")
    for key, (lo, hi) in (("data.scale", d.scale), ("data.ratio", d.ratio)):
        need(0.0 < lo <= hi, key, f"must be positive and ordered (min <= max), got [{lo}, {hi}]")
    for key in ("hflip", "random_erasing"):
        p = getattr(d, key)
        need(0.0 <= p <= 1.0, f"data.{key}", f"is a probability, must be in [0, 1], got {p}")
    for key in ("color_jitter", "lighting", "mixup", "cutmix"):
        need(getattr(d, key) >= 0.0, f"data.{key}", f"must be >= 0, got {getattr(d, key)}")
    if d.randaugment is not None:
        need(
            min(d.randaugment) >= 0,
            "data.randaugment",
            f"num_ops and magnitude must be >= 0, got {list(d.randaugment)}",
        )

    need(o.lr > 0.0, "optim.lr", f"must be > 0, got {o.lr}")
    need(o.lr_base_batch >= 1, "optim.lr_base_batch", f"must be >= 1, got {o.lr_base_batch}")
    need(0.0 <= o.momentum < 1.0, "optim.momentum", f"must be in [0, 1), got {o.momentum}")
    need(o.weight_decay >= 0.0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    # torch.optim.SGD rejects nesterov without momentum; say so at load time, not after the model is built.
    need(not (o.nesterov and o.momentum == 0.0), "optim.nesterov", "needs optim.momentum > 0")
    need(o.clip_grad is None or o.clip_grad > 0.0, "optim.clip_grad", f"must be > 0 or null, got {o.clip_grad}")
    need(
        o.backbone_lr_scale > 0.0,
        "optim.backbone_lr_scale",
        f"must be > 0 (model.freeze stops parts from training), got {o.backbone_lr_scale}",
    )
    need(
        o.layer_decay is None or 0.0 < o.layer_decay <= 1.0,
        "optim.layer_decay",
        f"must be in (0, 1] or null, got {o.layer_decay}",
    )

    increasing = all(a < b for a, b in zip(s.milestones[:-1], s.milestones[1:], strict=True))
    need(
        increasing and all(x >= 1 for x in s.milestones),
        "schedule.milestones",
        f"must be increasing epochs >= 1, got {s.milestones}",
    )
    need(0.0 < s.gamma <= 1.0, "schedule.gamma", f"must be in (0, 1], got {s.gamma}")
    # warmup_epochs >= train.epochs is allowed (a short trial run of a recipe): the trainer warns instead.
    need(s.warmup_epochs >= 0, "schedule.warmup_epochs", f"must be >= 0, got {s.warmup_epochs}")
    need(s.warmup_lr >= 0.0, "schedule.warmup_lr", f"must be >= 0, got {s.warmup_lr}")
    need(s.min_lr >= 0.0, "schedule.min_lr", f"must be >= 0, got {s.min_lr}")

    need(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}")
    need(t.accum_steps >= 1, "train.accum_steps", f"must be >= 1, got {t.accum_steps}")
    if t.accum_steps >= 1 and d.batch_size >= 1:
        need(
            d.batch_size % t.accum_steps == 0,
            "train.accum_steps",
            f"must divide data.batch_size ({d.batch_size}), got {t.accum_steps}",
        )
    need(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")
    need(0.0 < t.ema_decay < 1.0, "train.ema_decay", f"must be in (0, 1), got {t.ema_decay}")
    need(t.eval_every >= 1, "train.eval_every", f"must be >= 1, got {t.eval_every}")
    need(t.log_every >= 1, "train.log_every", f"must be >= 1, got {t.log_every}")
    need(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", f"must be >= 0, got {t.checkpoint_every_steps}")
    need(t.skip_nonfinite >= 0, "train.skip_nonfinite", f"must be >= 0, got {t.skip_nonfinite}")
    need(t.dist_timeout >= 1, "train.dist_timeout", f"must be >= 1 (seconds), got {t.dist_timeout}")
    return problems
