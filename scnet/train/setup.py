"""Everything a run builds from its Config, in the order a bit-exact resume depends on: seeds, then data, then
the model, optimizer, schedule, loss, scaler, EMA, DDP and compile."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from ..config import Config
from ..data.builtin import DEMO, resolve_root
from ..data.device import DevicePreprocess, build_mixup
from ..data.device_decode import DeviceDecoder, device_decoder_works
from ..data.loader import build_dataset, build_eval_loader, build_loader
from ..data.stream import TrainStream
from ..data.transforms import eval_transform, train_transform
from ..models import create_model, released_weights
from ..models.freeze import freeze
from ..models.options import model_options
from ..runtime.distributed import DistInfo
from ..runtime.precision import resolve_amp
from ..runtime.seeding import seed_process, use_autotuned_kernels, use_deterministic_kernels
from .errors import RunError
from .state import TrainState


def seed(cfg: Config, info: DistInfo) -> None:
    """Seeds and determinism first, so that every random choice after them is reproducible."""
    seed_process(cfg.train.seed, info.rank)
    if cfg.train.deterministic:
        use_deterministic_kernels(info.device)
    else:
        use_autotuned_kernels(info.device)


@dataclass
class TrainData:
    """The training stream, the validation loader and the class list the run indexes labels by."""

    stream: TrainStream
    val_loader: DataLoader
    eval_preprocess: DevicePreprocess
    classes: list[str]
    decode: str = "cpu"  # data.decode resolved: cpu or gpu
    decode_note: str = ""  # the line that says where JPEGs are decoded, when there was a choice to say


def _rank_0_first(info: DistInfo, action: Callable[[], object]) -> None:
    """Run ``action`` in rank 0 alone, before the other ranks go on, and share its outcome: when it fails, every
    rank raises rank 0's line as a RunError (and none waits forever)."""
    error = None
    if info.is_main:
        try:
            action()
        except (ValueError, OSError) as e:
            error = str(e)
    if info.world_size > 1:
        shared = [error]
        dist.broadcast_object_list(shared, src=0)  # also the barrier after the action
        error = shared[0]
    if error is not None:
        raise RunError(error)


def _resolve_data_root(cfg: Config, info: DistInfo) -> Path:
    """The folder ``data.root`` names; the built-in demo set is drawn (once, by rank 0) when asked for.

    Rank 0 resolves first and shares its outcome, so that every rank fails with the same line (and none
    waits forever) when the root is missing or cannot be drawn.
    """
    _rank_0_first(info, lambda: resolve_root(cfg.data.root, draw=True))
    root = resolve_root(cfg.data.root)
    if info.is_main and cfg.data.root == DEMO:
        print(f"data.root=demo: the built-in demo set, at {root.resolve()}", file=sys.stderr)
    return root


def resolve_decode(cfg: Config, info: DistInfo) -> tuple[str, str]:
    """``data.decode`` for this device (``cpu`` or ``gpu``), and the line that says so (empty when a CPU device
    simply decodes on the CPU). A RunError when gpu is asked for on a CUDA device whose torchvision cannot."""
    asked, device = cfg.data.decode, info.device
    if asked == "cpu":
        return "cpu", ""
    if device.type != "cuda":
        if asked == "gpu":
            return "gpu", f"data.decode=gpu on {device}: the device-decoding path with the CPU decoder standing in"
        return "cpu", ""
    works, how = device_decoder_works(device)
    if asked == "gpu" and not works:
        raise RunError(f"data.decode=gpu: {how}; data.decode=cpu decodes in the loader workers")
    return ("gpu" if works else "cpu"), f"data.decode={asked}: {'gpu' if works else 'cpu'} ({how})"


def _datasets(cfg: Config, info: DistInfo, decode: str) -> tuple[Dataset, Dataset, list[str], tuple]:
    """Train and val datasets and their transforms; the val split is indexed by the training split's class list."""
    root = _resolve_data_root(cfg, info)
    d = cfg.data
    where = "device" if decode == "gpu" else "cpu"
    train_tf = train_transform(
        d.image_size,
        scale=tuple(d.scale),
        ratio=tuple(d.ratio),
        interpolation=d.interpolation,
        hflip=d.hflip,
        color_jitter=d.color_jitter,
        randaugment=tuple(d.randaugment) if d.randaugment else None,
    )
    eval_tf = eval_transform(d.image_size, d.crop_pct, d.interpolation)
    # A bad training file is replaced (the batch stays full); a bad val file is skipped (counted once, never twice).
    train_bad, val_bad = ("raise", "raise") if d.strict else ("replace", "skip")
    train_ds = build_dataset(
        root,
        d.train_split,
        train_tf,
        bad_images=train_bad,
        seed=cfg.train.seed,
        shuffle=True,
        decode=where,
        draft=d.jpeg_draft,
    )
    classes = list(train_ds.classes)
    if cfg.model.num_classes != "auto" and len(classes) != cfg.model.num_classes:
        raise RunError(
            f"model.num_classes={cfg.model.num_classes} but {root / d.train_split} has {len(classes)} classes "
            "(model.num_classes=auto takes their number)"
        )
    val_ds = build_dataset(
        root,
        d.val_split,
        eval_tf,
        bad_images=val_bad,
        seed=cfg.train.seed,
        classes=classes,
        classes_from=f"the classes of the training split {root / d.train_split}",
        decode=where,
    )
    return train_ds, val_ds, classes, (train_tf, eval_tf)


def _warn_whole_run_warmup(cfg: Config, steps_per_epoch: int) -> None:
    """One line when warm-up lasts the whole run: say what the lr then does (timm's linear warm-up, t < warmup_t)."""
    s, epochs = cfg.schedule, cfg.train.epochs
    if s.warmup_epochs < epochs or s.warmup_epochs == 0:
        return
    # The lr of the last optimizer step (update t = total - 1) of a linear ramp over warmup_epochs.
    total, ramp = epochs * steps_per_epoch, s.warmup_epochs * steps_per_epoch
    last = s.warmup_lr + (total - 1) / ramp * (cfg.peak_lr - s.warmup_lr)
    after = "the cosine decay never starts" if s.name == "cosine" else "no step of schedule.milestones is taken"
    print(
        f"scnet-train: warning: schedule.warmup_epochs={s.warmup_epochs} >= train.epochs={epochs}: "
        f"the whole run is warm-up: the lr rises linearly from {s.warmup_lr:.3g} to {last:.3g} at the last step, "
        f"below the peak {cfg.peak_lr:.3g}, and {after}",
        file=sys.stderr,
    )


def with_class_count(cfg: Config, classes: list[str]) -> Config:
    """``cfg`` with ``model.num_classes: auto`` replaced by the number of ``classes`` (the training split's): the
    config that the run builds its head from and writes to config.yaml and its checkpoints, so that evaluation and
    export rebuild the same model."""
    if cfg.model.num_classes != "auto":
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(classes)))


def with_amp(cfg: Config, info: DistInfo) -> Config:
    """``cfg`` with ``train.amp: auto`` replaced by what this device computes natively (bf16 or none): what every
    step, validation, config.yaml and the checkpoints then use."""
    if cfg.train.amp != "auto":
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=resolve_amp("auto", info.device)))


def amp_note(cfg: Config, info: DistInfo) -> str:
    """The line that says what ``train.amp: auto`` chose (``cfg`` is resolved by :func:`with_amp`) and why."""
    why = "computes bf16 natively" if cfg.train.amp == "bf16" else "has no native bf16 (emulated, it is slower)"
    return f"train.amp=auto: {cfg.train.amp} (this {info.device.type.upper()} {why})"


def build_data(cfg: Config, info: DistInfo) -> TrainData:
    """The splits, their loaders and the device-side preprocessing; a RunError when a step cannot be made."""
    decode, note = resolve_decode(cfg, info)
    train_ds, val_ds, classes, (train_tf, eval_tf) = _datasets(cfg, info, decode)
    on_device = decode == "gpu"
    micro_batch = cfg.micro_batch_size(info.world_size)
    train_loader = build_loader(train_ds, micro_batch, cfg.data.workers, train=True, seed=cfg.train.seed)
    val_loader = build_eval_loader(val_ds, max(micro_batch, 1), cfg.data.workers)
    preprocess = DevicePreprocess(
        info.device,
        channels_last=cfg.model.channels_last,
        lighting=cfg.data.lighting,
        random_erasing=cfg.data.random_erasing,
        decoder=DeviceDecoder(train_tf, info.device) if on_device else None,
    )
    eval_preprocess = DevicePreprocess(
        info.device,
        channels_last=cfg.model.channels_last,
        decoder=DeviceDecoder(eval_tf, info.device) if on_device else None,
    )
    stream = TrainStream(train_loader, micro_batch, cfg.train.accum_steps, info.device, preprocess)
    if stream.steps_per_epoch == 0:
        raise RunError(
            f"{cfg.data.root}: too few training images for one step of data.batch_size={cfg.data.batch_size}"
        )
    if info.is_main:
        _warn_whole_run_warmup(cfg, stream.steps_per_epoch)
    return TrainData(stream, val_loader, eval_preprocess, classes, decode, note)


def _build_model(cfg: Config, info: DistInfo) -> nn.Module:
    m = cfg.model
    if m.pretrained is True:
        # Rank 0 downloads the release's file into torch.hub's cache before the others look there: the ranks that
        # share its cache read that copy (one download, not one a process); a failure stops every rank in one line.
        _rank_0_first(info, lambda: released_weights(m.name))
    model = create_model(m.name, num_classes=m.num_classes, pretrained=m.pretrained, **model_options(m))
    minimum = getattr(model, "min_input_size", 0)
    if cfg.data.image_size < minimum:
        raise RunError(f"data.image_size={cfg.data.image_size} is below {m.name}'s minimum of {minimum} px")
    report = getattr(model, "sc_conversion", None)  # set by create_model for model.convert_sc=true
    if report is not None and info.is_main:
        print(f"model.convert_sc: {report.summary()}", file=sys.stderr)
    if m.sync_bn and info.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if m.freeze:
        _freeze(model, m.freeze, info)
    memory_format = torch.channels_last if m.channels_last else torch.contiguous_format
    return model.to(info.device, memory_format=memory_format)


def _freeze(model: nn.Module, parts: list[str], info: DistInfo) -> None:
    """``model.freeze``: after SyncBatchNorm's conversion, which would otherwise turn the frozen BNs back into
    training ones; one line says what stays as loaded."""
    try:
        freeze(model, parts)
    except ValueError as e:  # a part a timm model converted with model.convert_sc does not have
        raise RunError(f"model.freeze: {e}") from None
    if info.is_main:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        print(
            f"model.freeze: {', '.join(parts)}: {frozen:,} of {total:,} parameters frozen, their BatchNorm "
            "statistics kept as loaded",
            file=sys.stderr,
        )


def _param_groups(cfg: Config, model: nn.Module) -> nn.Module | list[dict]:
    """What the optimizer updates: the model's trainable parameters, which timm groups as the recipes always had
    them (one group, or decay and no-decay ones), or, with ``optim.backbone_lr_scale`` or ``optim.layer_decay``,
    groups that carry timm's ``lr_scale``: the classifier's first (scale 1: its lr is the one logged), then the
    backbone's (scale ``layer_decay ** depth * backbone_lr_scale``). timm's schedulers set each group's lr to the
    schedule's value times its ``lr_scale``, warm-up and decay alike."""
    o = cfg.optim
    if o.layer_decay is None and o.backbone_lr_scale == 1.0:
        return model
    no_decay = getattr(model, "no_weight_decay", set)()
    if o.layer_decay is not None:
        groups = param_groups_layer_decay(
            model,
            o.weight_decay,
            no_weight_decay_list=no_decay,
            weight_decay_exclude_1d=o.no_decay_norm_bias,
            layer_decay=o.layer_decay,
        )
    else:
        groups = param_groups_weight_decay(
            model, o.weight_decay, weight_decay_exclude_1d=o.no_decay_norm_bias, no_weight_decay_list=no_decay
        )
    head = {id(p) for p in model.get_classifier().parameters()}
    heads, backbone = [], []
    for group in groups:
        scale = group.get("lr_scale", 1.0)
        ours = [p for p in group["params"] if id(p) in head]
        others = [p for p in group["params"] if id(p) not in head]
        if ours:
            heads.append({**group, "params": ours, "lr_scale": scale})
        if others:
            backbone.append({**group, "params": others, "lr_scale": scale * o.backbone_lr_scale})
    return heads + backbone


def _optimizer_and_schedule(cfg: Config, model: nn.Module, steps_per_epoch: int):
    o, s = cfg.optim, cfg.schedule
    # timm's "sgd" is Nesterov SGD; "momentum" is plain SGD with momentum (the PyTorch example's).
    opt_name = {"sgd": "sgd" if o.nesterov else "momentum", "adamw": "adamw"}[o.name]
    optimizer = create_optimizer_v2(
        _param_groups(cfg, model),
        opt=opt_name,
        lr=cfg.peak_lr,
        weight_decay=o.weight_decay,
        momentum=o.momentum,
        filter_bias_and_bn=o.no_decay_norm_bias,
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="multistep" if s.name == "step" else "cosine",
        num_epochs=cfg.train.epochs,
        decay_milestones=list(s.milestones),
        decay_rate=s.gamma,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr,
        min_lr=s.min_lr,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    if s.name == "step":
        # timm decays at the update before each milestone (its t + 1 convention), the last of the epoch before;
        # the recipes' StepLR multiplies by gamma from the first update of the milestone's epoch.
        scheduler.decay_t = [m * steps_per_epoch + 1 for m in s.milestones]
    return optimizer, scheduler


def build_state(cfg: Config, info: DistInfo, data: TrainData) -> TrainState:
    """Model, optimizer, schedule, mixup, loss, scaler, EMA, DDP and compile, in this order."""
    model = _build_model(cfg, info)
    optimizer, scheduler = _optimizer_and_schedule(cfg, model, data.stream.steps_per_epoch)
    mixup = build_mixup(cfg.data.mixup, cfg.data.cutmix, cfg.train.label_smoothing, cfg.model.num_classes)
    criterion = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.train.amp == "fp16")
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay) if cfg.train.ema else None
    ddp = None
    if info.world_size > 1:
        ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    net = ddp or model
    if cfg.model.compile:
        net = torch.compile(net)
    return TrainState(model, net, ddp, optimizer, scheduler, scaler, ema, mixup, criterion, data.classes)
