"""The training run: one function that reads top to bottom, from a Config to checkpoints.

data -> model -> optimizer/schedule -> loop (forward, loss, backward, step, EMA, log) -> evaluate ->
checkpoint. Distributed setup comes from torchrun's environment (``scnet.engine.distributed``).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import Config, config_to_dict, dump_config
from ..data.builtin import DEMO, resolve_root
from ..data.device import DeviceLoader, DevicePreprocess, build_mixup
from ..data.loader import EpochSampler, ReplacedLog, build_dataset, build_loader, skipped_summary
from ..data.shards import ShardPosition
from ..data.transforms import eval_transform, train_transform
from ..models import create_model
from ..models.weights import check_compatible
from . import checkpoint as ckpt
from . import faults
from .build import model_options
from .distributed import DistInfo, cleanup_distributed, setup_distributed
from .evaluate import AMP_DTYPES, build_eval_loader, evaluate
from .seeding import KernelAlerts, seed_process, use_deterministic_kernels


class RunError(ValueError):
    """A run that cannot start (bad data, clashing output_dir, ...): one line for the user."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf (more often than ``train.skip_nonfinite`` allows): one line for the user."""


class PeerLostError(RuntimeError):
    """Another process of a multi-process run died or stopped answering: one line for the user, on every rank."""


# What gloo and NCCL say when a peer is gone or silent (they raise plain RuntimeErrors). gloo's wait for a
# stopped peer inside DDP's buffer broadcast ends in "Application timeout caused pair closure".
_PEER_LOST = (
    "Connection reset",
    "Connection closed",
    "Broken pipe",
    "Timed out",
    "timed out",
    "timeout",
    "pair closure",
    "NCCL",
    "gloo",
)


def _peer_lost(e: BaseException, info: DistInfo, timeout: int, out: Path) -> PeerLostError | None:
    """The one-line error for a collective that failed because another process is gone, else None."""
    text = str(e)
    if info.world_size == 1 or not (isinstance(e, dist.DistError) or any(k in text for k in _PEER_LOST)):
        return None
    # "[.../gloo/transport/tcp/pair.cc:545] Read error ...: Connection reset by peer. This is typically ..."
    cause = text.split("] ", 1)[-1].split(". ")[0].strip() if text else type(e).__name__
    last = out / "last.pth"
    kept = f"last checkpoint: {last}" if last.is_file() else "no checkpoint written yet"
    return PeerLostError(
        f"rank {info.rank} of {info.world_size}: lost the other processes of the run ({cause}); one of them died or "
        f"did not answer within train.dist_timeout={timeout} s; {kept}; restart the run with --resume auto"
    )


class Preempted:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and exits cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.signum = signum

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _resolve_data_root(cfg: Config, info: DistInfo) -> Path:
    """The folder ``data.root`` names; the built-in demo set is drawn (once, by rank 0) when asked for.

    Rank 0 resolves first and shares its outcome, so that every rank fails with the same line (and none
    waits forever) when the root is missing or cannot be drawn.
    """
    error = None
    if info.is_main:
        try:
            resolve_root(cfg.data.root, draw=True)
        except (ValueError, OSError) as e:
            error = str(e)
    if info.world_size > 1:
        shared = [error]
        dist.broadcast_object_list(shared, src=0)  # also the barrier after the drawing
        error = shared[0]
    if error is not None:
        raise RunError(error)
    root = resolve_root(cfg.data.root)
    if info.is_main and cfg.data.root == DEMO:
        print(f"data.root=demo: the built-in demo set, at {root.resolve()}", file=sys.stderr)
    return root


def _prepare_data(cfg: Config, info: DistInfo):
    """Train and val datasets; the val split is indexed by the training split's class list."""
    root = _resolve_data_root(cfg, info)
    d = cfg.data
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
    train_ds = build_dataset(root, d.train_split, train_tf, bad_images=train_bad, seed=cfg.train.seed, shuffle=True)
    classes = list(train_ds.classes)
    if len(classes) != cfg.model.num_classes:
        raise RunError(
            f"model.num_classes={cfg.model.num_classes} but {root / d.train_split} has {len(classes)} classes"
        )
    val_ds = build_dataset(
        root,
        d.val_split,
        eval_tf,
        bad_images=val_bad,
        seed=cfg.train.seed,
        classes=classes,
        classes_from=f"the classes of the training split {root / d.train_split}",
    )
    return train_ds, val_ds, classes


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


def _check_resume_classes(resume_path: Path, state: dict, classes: list[str], root: str) -> None:
    """A resumed run must index the classes as the checkpoint's run did (absent in older checkpoints)."""
    saved = state.get("classes")
    if saved is None or list(saved) == classes:
        return
    missing = [c for c in saved if c not in classes]
    new = [c for c in classes if c not in saved]
    what = f"{missing[0]!r} is missing" if missing else f"{new[0]!r} is new" if new else "in another order"
    raise RunError(
        f"{resume_path}: its run trained on {len(saved)} classes, the training split of data.root={root} "
        f"has {len(classes)} ({what}); resume with the same classes"
    )


def _build_model(cfg: Config, info: DistInfo) -> nn.Module:
    m = cfg.model
    model = create_model(m.name, num_classes=m.num_classes, pretrained=m.pretrained, **model_options(m))
    minimum = getattr(model, "min_input_size", 0)
    if cfg.data.image_size < minimum:
        raise RunError(f"data.image_size={cfg.data.image_size} is below {m.name}'s minimum of {minimum} px")
    report = getattr(model, "sc_conversion", None)  # set by create_model for model.convert_sc=true
    if report is not None and info.is_main:
        print(f"model.convert_sc: {report.summary()}", file=sys.stderr)
    if m.sync_bn and info.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if m.channels_last else torch.contiguous_format
    return model.to(info.device, memory_format=memory_format)


def _read_resume(candidates: list[Path], is_main: bool) -> tuple[dict, Path]:
    """The first readable training checkpoint of ``candidates``, saying in one line
    when it is not the first; a RunError naming every problem when none is."""
    problems = []
    for path in candidates:
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        try:
            state = ckpt.load(path)
        except Exception as e:  # noqa: BLE001 - truncated, empty, random or unsafe bytes: one line for the user
            problems.append(f"{path}: cannot read checkpoint ({str(e).splitlines()[0] if str(e) else e!r})")
            continue
        if not isinstance(state, dict) or "model" not in state or "optimizer" not in state:
            problems.append(f"{path}: not a training checkpoint of scnet-train (use model.pretrained for weights)")
            continue
        if problems and is_main:
            print(f"warning: {problems[-1]}; resuming from the previous checkpoint, {path}", file=sys.stderr)
        return state, path
    if len(candidates) > 1:
        problems.append("no good checkpoint left to resume from")
    raise RunError("; ".join(problems))


def _align_metrics(path: Path, state: dict) -> None:
    """Make metrics.jsonl list exactly the epochs the resumed checkpoint has finished.

    Lines of later epochs (a resume from an older checkpoint redoes them) and a torn last line go; the line of
    the checkpoint's own epoch is added from the checkpoint when the run was killed before writing it.
    """
    finished = state["epoch"]
    lines, changed = [], False
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                epoch = json.loads(line)["epoch"]
            except (ValueError, KeyError, TypeError):
                changed = True  # torn by a kill mid-write
                continue
            if epoch > finished:
                changed = True
                continue
            lines.append((epoch, line))
    saved = state.get("metrics")
    if saved and saved.get("epoch") == finished and all(epoch != finished for epoch, _ in lines):
        lines.append((finished, json.dumps(saved)))
        changed = True
    if changed:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(f"{line}\n" for _, line in lines))
        tmp.replace(path)


def _check_output_dir(out: Path, resuming: bool) -> None:
    if not resuming and out.exists() and any(out.glob("*.pth")):
        raise RunError(f"{out} already holds a run: resume it with --resume auto, or set output_dir to a new folder")


def train(cfg: Config, resume: str | None = None) -> dict[str, Any]:
    """Run training as ``cfg`` says; ``resume`` is a checkpoint path, ``"auto"`` or None. Returns the last metrics."""
    info = setup_distributed(timeout=cfg.train.dist_timeout)
    try:
        metrics = _train(cfg, resume, info)
    except BaseException as e:
        # The run's own error is what the user must see: leaving the group can fail too when a peer is gone.
        with suppress(Exception):
            cleanup_distributed()
        lost = _peer_lost(e, info, cfg.train.dist_timeout, Path(cfg.output_dir)) if isinstance(e, Exception) else None
        if lost is None:
            raise
        raise lost from e
    cleanup_distributed()
    return metrics


def _train(cfg: Config, resume: str | None, info: DistInfo) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    resume_path = ckpt.find_resume(out) if resume == "auto" else (Path(resume) if resume else None)
    if resume and resume != "auto" and not resume_path.is_file():
        raise RunError(f"{resume}: no such checkpoint")
    _check_output_dir(out, resume_path is not None)

    # Seeding and determinism first, so every random choice below is reproducible.
    seed_process(cfg.train.seed, info.rank)
    if cfg.train.deterministic:
        use_deterministic_kernels(info.device)
    elif info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # Data.
    train_ds, val_ds, classes = _prepare_data(cfg, info)
    micro_batch = cfg.micro_batch_size(info.world_size)
    train_loader = build_loader(train_ds, micro_batch, cfg.data.workers, train=True, seed=cfg.train.seed)
    val_loader = build_eval_loader(val_ds, max(micro_batch, 1), cfg.data.workers)
    preprocess = DevicePreprocess(
        info.device,
        channels_last=cfg.model.channels_last,
        lighting=cfg.data.lighting,
        random_erasing=cfg.data.random_erasing,
    )
    eval_preprocess = DevicePreprocess(info.device, channels_last=cfg.model.channels_last)
    if isinstance(train_loader.sampler, EpochSampler):
        steps_per_epoch = len(train_loader) // cfg.train.accum_steps
    else:  # shards: the batches the loader's workers actually deliver (each drops its own partial batch)
        steps_per_epoch = train_ds.rank_num_batches(cfg.data.workers, micro_batch, 0) // cfg.train.accum_steps
    if steps_per_epoch == 0:
        raise RunError(
            f"{cfg.data.root}: too few training images for one step of data.batch_size={cfg.data.batch_size}"
        )
    if info.is_main:
        _warn_whole_run_warmup(cfg, steps_per_epoch)

    # Model, optimizer, schedule, loss, EMA.
    model = _build_model(cfg, info)
    o, s = cfg.optim, cfg.schedule
    # timm's "sgd" is Nesterov SGD; "momentum" is plain SGD with momentum (the PyTorch example's).
    opt_name = {"sgd": "sgd" if o.nesterov else "momentum", "adamw": "adamw"}[o.name]
    optimizer = create_optimizer_v2(
        model,
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
    mixup = build_mixup(cfg.data.mixup, cfg.data.cutmix, cfg.train.label_smoothing, cfg.model.num_classes)
    criterion = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    amp_dtype = AMP_DTYPES[cfg.train.amp]
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.train.amp == "fp16")
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay) if cfg.train.ema else None
    ddp = None
    if info.world_size > 1:
        ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    net = ddp or model
    if cfg.model.compile:
        net = torch.compile(net)

    # Resume: everything that decides the next step.
    start_epoch, step_in_epoch, global_step, best_top1 = 0, 0, 0, -1.0
    shard_resume = None  # shards, resumed mid-epoch: how far this rank's loader workers had read
    epoch_so_far = None  # resumed mid-epoch: this rank's sums over the epoch's steps before the checkpoint
    if resume_path is not None:
        # --resume auto may fall back to the checkpoint before a damaged (or, killed mid-rename, missing) last
        # one; a named file may not.
        last = out / "last.pth"
        candidates = [last, ckpt.previous_path(last)] if resume == "auto" else [resume_path]
        state, resume_path = _read_resume(candidates, info.is_main)
        _check_resume_classes(resume_path, state, classes, cfg.data.root)
        check_compatible(model, state["model"], str(resume_path))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and "model_ema" in state:
            ema.module.load_state_dict(state["model_ema"])
        start_epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        global_step, best_top1 = state["global_step"], state["best_top1"]
        ckpt.set_rng_state(state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0])
        if step_in_epoch > 0 and info.rank < len(state.get("shard_positions") or []):
            shard_resume = state["shard_positions"][info.rank]
        if step_in_epoch > 0 and info.rank < len(state.get("epoch_so_far") or []):
            epoch_so_far = state["epoch_so_far"][info.rank]
        if info.is_main:
            _align_metrics(out / "metrics.jsonl", state)

    writer = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temporaries(out)  # left by a process killed while writing a checkpoint
        dump_config(cfg, out / "config.yaml")
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(out / "tb")

    shard_pos: ShardPosition | None = None

    def save(name: str, epoch: int, step: int, extra: dict | None = None) -> None:
        # Every rank's RNG state; mid-epoch, also its sums over the epoch so far and, on shards, how far its
        # loader workers have read: a resumed epoch then reports what the uninterrupted one would have.
        mid = step > 0
        so_far = dict(loss_sum=loss_sum.item(), loss_seen=loss_seen, nonfinite=nonfinite_in_epoch) if mid else None
        if so_far is not None:
            so_far["replaced"] = list(replaced.names)
        position = shard_pos.state_dict() if shard_pos is not None and mid else None
        gathered = [(ckpt.rng_state(), position, so_far)]
        if info.world_size > 1:
            gathered = [None] * info.world_size
            dist.all_gather_object(gathered, (ckpt.rng_state(), position, so_far))
        rngs, positions, sums = (list(column) for column in zip(*gathered, strict=True))
        error = None
        if info.is_main:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step,
                "global_step": global_step,
                "best_top1": best_top1,
                "rng": rngs,
                "config": config_to_dict(cfg),
                "classes": classes,  # index -> class name: scnet-eval labels any val split by it
                **(extra or {}),
            }
            if positions[0] is not None:
                state["shard_positions"] = positions
            if sums[0] is not None:
                state["epoch_so_far"] = sums
            if ema is not None:
                state["model_ema"] = ema.module.state_dict()
            try:
                ckpt.save_atomic(state, out / name, keep_previous=name == "last.pth")
            except ckpt.CheckpointWriteError as e:
                error = str(e)
        shared = [error]
        if info.world_size > 1:
            dist.broadcast_object_list(shared, src=0)  # every rank stops together, none waits for a rank 0 gone
        if shared[0] is not None:
            last = out / "last.pth"
            kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise ckpt.CheckpointWriteError(f"{shared[0]}; {kept} (untouched; no partial file left)")

    preempt = Preempted()
    # train.deterministic: ops without a deterministic kernel (none on CPU) are named once, after the first step.
    alerts = KernelAlerts(quiet=not info.is_main)
    if cfg.train.deterministic:
        alerts.__enter__()
    metrics: dict[str, Any] = {}
    nonfinite_total = 0  # skipped steps of this process's run (not restored on resume: a fresh allowance)
    bar = None
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            if isinstance(train_loader.sampler, EpochSampler):
                train_loader.sampler.set_epoch(epoch, start=step_in_epoch * cfg.train.accum_steps * micro_batch)
            else:  # shards: each loader worker's stream starts where the checkpoint's run left it
                order = train_ds.batch_order(cfg.data.workers, micro_batch, epoch)
                shard_pos = ShardPosition(order, cfg.data.workers, shard_resume if epoch == start_epoch else None)
                train_ds.set_epoch(epoch, shard_pos.skip, shard_pos.next_worker)
            net.train()
            replaced = ReplacedLog()
            val_skipped_names: list[str] = []
            loss_sum = torch.zeros((), device=info.device)
            loss_seen = 0  # images of the steps whose loss was finite
            seen, t0, wait = 0, time.perf_counter(), 0.0
            bar = tqdm(
                total=steps_per_epoch,
                initial=step_in_epoch,
                desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                disable=not info.is_main,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            it = iter(DeviceLoader(train_loader, info.device, preprocess))
            step = step_in_epoch
            nonfinite_in_epoch = 0
            if epoch == start_epoch and epoch_so_far is not None:
                loss_sum.fill_(epoch_so_far["loss_sum"])  # float32 -> float -> float32: exact
                loss_seen, nonfinite_in_epoch = epoch_so_far["loss_seen"], epoch_so_far["nonfinite"]
                replaced.update(epoch_so_far["replaced"])
            while step < steps_per_epoch:
                # Only when skipping is allowed: a skipped step must also undo the BN statistics its forward
                # moved (a few hundred floats per layer).
                buffers_before = [b.clone() for b in model.buffers()] if cfg.train.skip_nonfinite else None
                step_loss = torch.zeros((), device=info.device)
                step_images = 0
                for micro in range(cfg.train.accum_steps):
                    tw = time.perf_counter()
                    faults.point("data")
                    images, labels, names = next(it)
                    wait += time.perf_counter() - tw
                    if shard_pos is not None:
                        shard_pos.update(images.shape[0], len(names))
                    replaced.update(names)
                    if mixup is not None:
                        images, labels = mixup(images, labels)
                    last_micro = micro == cfg.train.accum_steps - 1
                    sync = ddp.no_sync() if ddp is not None and not last_micro else nullcontext()
                    with (
                        sync,
                        torch.autocast(
                            info.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                        ),
                    ):
                        loss = criterion(net(images), labels) / cfg.train.accum_steps
                    scaler.scale(loss).backward()
                    step_loss += loss.detach().float() * cfg.train.accum_steps * images.shape[0]
                    step_images += images.shape[0]
                seen += step_images
                faults.point("step")
                # One host sync per step (and, with several processes, one tiny all_reduce, so that every
                # rank skips or stops at the same step): a NaN must not reach the weights.
                bad = (~torch.isfinite(step_loss)).float()
                if info.world_size > 1:
                    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
                if bad.item():
                    nonfinite_total += 1
                    nonfinite_in_epoch += 1
                    where = f"epoch {epoch + 1} step {step + 1} (global step {global_step + 1})"
                    last = out / "last.pth"
                    kept = f"last good checkpoint: {last}" if last.is_file() else "no checkpoint written yet"
                    if nonfinite_total > cfg.train.skip_nonfinite:
                        bar.close()
                        allowed = (
                            f"more than train.skip_nonfinite={cfg.train.skip_nonfinite} such steps"
                            if cfg.train.skip_nonfinite
                            else "set train.skip_nonfinite=N to skip up to N such steps"
                        )
                        raise NonFiniteLossError(f"non-finite training loss at {where}; {kept}; {allowed}")
                    optimizer.zero_grad(set_to_none=True)
                    for b, before in zip(model.buffers(), buffers_before, strict=True):
                        b.copy_(before)
                    if info.is_main:
                        tqdm.write(f"skipped a non-finite training loss at {where}", file=sys.stderr)
                    global_step += 1
                    step += 1
                    scheduler.step_update(num_updates=global_step)
                    bar.update(1)
                    continue
                # Summed on the device; read at log time only.
                loss_sum += step_loss
                loss_seen += step_images
                if o.clip_grad:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                alerts.flush()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                step += 1
                scheduler.step_update(num_updates=global_step)
                if ema is not None:
                    ema.update(model, step=global_step)
                lr = optimizer.param_groups[0]["lr"]
                bar.update(1)
                if global_step % cfg.train.log_every == 0 or step == steps_per_epoch:
                    elapsed = time.perf_counter() - t0
                    avg_loss = loss_sum.item() / max(loss_seen, 1)
                    ips = seen * info.world_size / max(elapsed, 1e-9)
                    bar.set_postfix(
                        loss=f"{avg_loss:.4f}",
                        lr=f"{lr:.3g}",
                        img_s=f"{ips:.0f}",
                        wait=f"{wait / max(elapsed, 1e-9):.0%}",
                    )
                    if writer is not None:
                        writer.add_scalar("train/loss", avg_loss, global_step)
                        writer.add_scalar("train/lr", lr, global_step)
                        writer.add_scalar("train/images_per_second", ips, global_step)
                # All ranks must stop at the same step: agree through an all_reduce (every log_every steps,
                # to keep a collective out of most steps); a single process checks its flag every step.
                stopping = preempt.signum is not None
                if info.world_size > 1:
                    if global_step % cfg.train.log_every == 0 or step == steps_per_epoch:
                        flag = torch.tensor(int(stopping), device=info.device)
                        dist.all_reduce(flag)
                        stopping = bool(flag.item())
                    else:
                        stopping = False
                every = cfg.train.checkpoint_every_steps
                if stopping or (every and global_step % every == 0 and step < steps_per_epoch):
                    save("last.pth", epoch, step)
                if stopping:
                    bar.close()
                    if info.is_main:
                        print(
                            f"stopped by signal at epoch {epoch + 1} step {step}; checkpoint {out / 'last.pth'}",
                            file=sys.stderr,
                        )
                    return {"preempted": True, "epoch": epoch, "step": step}
            bar.close()
            step_in_epoch = 0
            # The schedule's lr at the epoch's last step, applied or skipped as non-finite: defined even when
            # every step of a (resumed) epoch was skipped, and the same for a resumed and an uninterrupted run.
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step(epoch + 1)
            epoch_time = time.perf_counter() - t0
            metrics = {
                "epoch": epoch + 1,
                "train_loss": loss_sum.item() / max(loss_seen, 1),
                "lr": lr,
                "epoch_time": epoch_time,
                "images_per_second": seen * info.world_size / epoch_time,
                "data_wait": wait / epoch_time,
                "replaced": len(replaced.names),
                "nonfinite_steps": nonfinite_in_epoch,
                # What the epoch ran on: device-hours of a run = sum(epoch_time) * world_size.
                "world_size": info.world_size,
                "device": info.device.type,
            }
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                val = evaluate(model, val_loader, info.device, cfg.train.amp, preprocess=eval_preprocess)
                metrics.update(top1=val["top1"], top5=val["top5"], val_images=val["images"])
                metrics.update(val_skipped=len(val["skipped"]))
                val_skipped_names = val["skipped"]
                if ema is not None:
                    val_ema = evaluate(ema.module, val_loader, info.device, cfg.train.amp, preprocess=eval_preprocess)
                    metrics.update(ema_top1=val_ema["top1"], ema_top5=val_ema["top5"])
            is_best = metrics.get("top1", -1.0) > best_top1
            if is_best:
                best_top1 = metrics["top1"]
            # best.pth before last.pth: a run killed between the two redoes this epoch and writes best.pth again.
            # last.pth carries the epoch's metrics: a run killed before its metrics.jsonl line gets it on resume.
            if is_best:
                save("best.pth", epoch + 1, 0)
            save("last.pth", epoch + 1, 0, {"metrics": metrics})
            faults.point("epoch_end")
            if info.is_main:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                if writer is not None:
                    for key in ("top1", "top5", "ema_top1", "ema_top5", "epoch_time", "images_per_second"):
                        if key in metrics:
                            writer.add_scalar(f"epoch/{key}", metrics[key], epoch + 1)
                    writer.flush()
                line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
                print(line, file=sys.stderr)
                if replaced.names:
                    print(replaced.summary(), file=sys.stderr)
                if val_skipped_names:
                    print(f"validation: {skipped_summary(val_skipped_names)}", file=sys.stderr)
        return metrics
    finally:
        if bar is not None:
            bar.close()  # an error's one line then starts on a line of its own, not after the progress bar
        preempt.restore()
        if cfg.train.deterministic:
            alerts.__exit__(None, None, None)
        if writer is not None:
            writer.close()
