"""What the optimizer does: a few real training steps against a plain-PyTorch loop written out here.

``scnet.train.run.train`` runs a few steps of a recipe on a tiny demo set while PyTorch's global module and
optimizer hooks record what it fed the model (each micro-batch, the targets the loss saw, the RNG state that
drop-path draws from), its initial weights and the lr of each optimizer step. A reference loop then replays
those micro-batches with ``torch.optim.SGD`` and everything else written out: the parameter groups, the
learning rate of each step, the loss, accumulation, gradient clipping and the EMA update. The trainer's
``last.pth`` must hold the reference's weights, BN statistics and EMA within float rounding.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from scnet.config import Config, load_config
from scnet.data.demo import make_demo
from scnet.models import create_model
from scnet.train import train

RECIPES = Path(__file__).parents[2] / "configs" / "_base_"
CLASSES, TRAIN_PER_CLASS = 4, 2  # 8 training images: 2 optimizer steps per epoch at batch 4

# Both recipes keep what makes them what they are (schedule, momentum, decay groups, EMA, augmentation); the
# sizes shrink to a few 100 px steps, and lr, weight decay and EMA decay grow so that every part of an update
# (the lr scaling, which parameters decay, each EMA step) moves the weights far above float rounding.
COMMON = [
    "model.name=scnet50",
    f"model.num_classes={CLASSES}",
    "model.channels_last=false",  # NCHW is the faster layout on CPU
    # Each block starts as identity. Without it, a fresh 50-layer net at batch 4 is chaotic: weights 1e-7 apart
    # (float rounding) give gradients 2% apart, in float64 too, and 4 steps end anywhere.
    "model.zero_init_last=true",
    "data.image_size=100",
    "data.batch_size=4",
    "data.workers=0",
    "optim.lr=0.08",
    "optim.lr_base_batch=16",  # peak lr 0.02 at batch 4: ignoring the scaling would make it 0.08
    "optim.weight_decay=0.005",
    "train.epochs=2",
    "train.deterministic=true",
    "train.tensorboard=false",
]
CASES = {
    # Step schedule with a milestone inside the run, plain momentum, decay on everything; plus clipping (the
    # gradients of these steps are far above 0.5, so every step is clipped).
    "authors": ("recipe_authors.yaml", ["schedule.milestones=[1]", "optim.clip_grad=0.5"]),
    # Cosine with one epoch (2 steps) of warm-up then 2 of decay, no decay on norms and biases, EMA, mixup/cutmix,
    # random erasing, drop-path; plus Nesterov and 2 micro-batches per step. drop_path_rate 0.2 makes blocks
    # drop within 8 micro-batches of 2; ema_decay 0.75 gives each update a visible weight.
    "modern": (
        "recipe_modern.yaml",
        [
            "schedule.warmup_epochs=1",
            "optim.nesterov=true",
            "train.accum_steps=2",
            "model.drop_path_rate=0.2",
            "train.ema_decay=0.75",
        ],
    ),
}

# Float32 rounding. The reference's label-smoothed loss, clipping norm and EMA use other operations than the
# library calls of the trainer, a few ulps apart, and 4 steps carry that into the weights: over train.seed 0-4
# at most 0.1 of this tolerance (the authors' recipe, BN running means); the modern recipe's weights come out
# bitwise equal, its EMA within 0.03. Each breakage tried exceeded it 17 to 80,000 times.
RTOL, ATOL = 1e-5, 1e-6


@dataclass
class Replay:
    """One recipe's trainer run as the hooks saw it, its checkpoint, and the reference loop's result."""

    cfg: Config
    steps_per_epoch: int
    lrs: list[list[float]]  # the trainer's lr of every param group, at each optimizer step
    decayed: set[str]  # names of the trainer's parameters in a param group with weight decay
    reference_decayed: set[str]  # and of the reference's
    trainer_losses: list[float]  # the trainer's criterion output per micro-batch (before / accum_steps)
    reference_losses: list[float]
    trainer: dict[str, dict[str, torch.Tensor]]  # "model" and (EMA on) "model_ema" of last.pth
    reference: dict[str, dict[str, torch.Tensor]]
    clipped: int  # optimizer steps of the reference whose gradient norm was above clip_grad


def scheduled_lr(cfg: Config, t: int, steps_per_epoch: int) -> float:
    """The lr of optimizer step ``t`` (from 0), written out from the schema's definitions.

    Peak ``optim.lr * data.batch_size / optim.lr_base_batch``; a linear ramp from ``schedule.warmup_lr``
    towards it over ``warmup_epochs``; then the peak times ``gamma`` per milestone passed, or the cosine that
    runs from the peak at step 0 to ``min_lr`` at the end of the run (the warm-up replaces its start). The lr
    moves per optimizer step (timm's step_update after each one), not per epoch.
    """
    s = cfg.schedule
    peak = cfg.optim.lr * cfg.data.batch_size / cfg.optim.lr_base_batch
    warmup = s.warmup_epochs * steps_per_epoch
    if t < warmup:
        return s.warmup_lr + (peak - s.warmup_lr) * t / warmup
    if s.name == "cosine":
        total = cfg.train.epochs * steps_per_epoch
        return s.min_lr + 0.5 * (peak - s.min_lr) * (1 + math.cos(math.pi * t / total))
    passed = sum(t >= m * steps_per_epoch for m in s.milestones)
    return peak * s.gamma**passed


def decay_groups(model: nn.Module, cfg: Config) -> tuple[list[nn.Parameter], list[str], list[nn.Parameter]]:
    """The parameters with weight decay (and their names), and those without, as ``optim`` says.

    ``no_decay_norm_bias`` excludes the weights of normalisation layers and every bias; otherwise all decay.
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    norm_params = {
        id(p) for module in model.modules() if isinstance(module, norm_types) for p in module.parameters(False)
    }
    decay, names, no_decay = [], [], []
    for name, p in model.named_parameters():
        if cfg.optim.no_decay_norm_bias and (id(p) in norm_params or name.endswith(".bias")):
            no_decay.append(p)
        else:
            decay.append(p)
            names.append(name)
    return decay, names, no_decay


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Batch mean of -sum_j q_j log p_j: q the one-hot label smoothed (1 - s + s / K on the label, s / K on
    every other class), or ``target`` itself when it is already a distribution (mixup/cutmix, smoothing in)."""
    log_p = torch.log_softmax(logits, dim=1)
    if target.ndim == 1:
        k = logits.shape[1]
        target = torch.full_like(log_p, smoothing / k).scatter_(1, target[:, None], 1 - smoothing + smoothing / k)
    return -(target * log_p).sum(dim=1).mean()


def clip_gradients_(params: list[nn.Parameter], max_norm: float) -> bool:
    """Scale the gradients by max_norm / (their global L2 norm + 1e-6) when that is below 1; True if it was."""
    norm = torch.stack([p.grad.pow(2).sum() for p in params]).sum().sqrt()
    scale = max_norm / (norm.item() + 1e-6)
    if scale >= 1:
        return False
    for p in params:
        p.grad.mul_(scale)
    return True


def record_trainer_run(cfg: Config, model_class: type) -> dict:
    """Run the trainer on ``cfg`` and return what the global hooks saw of it."""
    seen: dict = {"initial": None, "inputs": [], "targets": [], "losses": [], "lrs": [], "decayed": None}

    def before_forward(module, args):
        # The network's own training forwards: not the transforms (modules too) nor evaluation.
        if type(module) is not model_class or not module.training:
            return
        if seen["initial"] is None:
            seen["initial"] = {k: v.detach().clone() for k, v in module.state_dict().items()}
            seen["names"] = {id(p): name for name, p in module.named_parameters()}
        # Drop-path draws from the global generator inside forward: the reference draws from the same state.
        seen["inputs"].append((args[0].detach().clone(), torch.get_rng_state()))

    def after_forward(module, args, output):
        if isinstance(module, (nn.CrossEntropyLoss, SoftTargetCrossEntropy)):
            seen["targets"].append(args[1].detach().clone())
            seen["losses"].append(output.item())

    def before_step(optimizer, args, kwargs):
        seen["lrs"].append([g["lr"] for g in optimizer.param_groups])
        if seen["decayed"] is None:
            names = seen["names"]
            seen["decayed"] = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}

    handles = [
        register_module_forward_pre_hook(before_forward),
        register_module_forward_hook(after_forward),
        register_optimizer_step_pre_hook(before_step),
    ]
    try:
        train(cfg)
    finally:
        for h in handles:
            h.remove()
    return seen


def reference_loop(
    cfg: Config, model: nn.Module, seen: dict, steps_per_epoch: int
) -> tuple[dict, list[str], list[float], int]:
    """Replay the recorded micro-batches with plain PyTorch.

    Returns the final state_dicts ("model", and "model_ema" with EMA on), the names of the decayed
    parameters, the loss of each micro-batch and the number of clipped steps.
    """
    o, t = cfg.optim, cfg.train
    model.load_state_dict(seen["initial"])
    model.train()
    decay, decayed, no_decay = decay_groups(model, cfg)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.0,  # set before every step
        momentum=o.momentum,
        nesterov=o.nesterov,
    )
    # The EMA starts as a copy of the initial weights and averages every float tensor of the state_dict, BN
    # statistics included; integer buffers (num_batches_tracked) are copied.
    ema = {k: v.clone() for k, v in seen["initial"].items()} if t.ema else None
    losses, clipped = [], 0
    micro = iter(zip(seen["inputs"], seen["targets"], strict=True))
    rng = torch.get_rng_state()
    try:
        for step in range(t.epochs * steps_per_epoch):
            for _ in range(t.accum_steps):
                (images, state), target = next(micro)
                torch.set_rng_state(state)
                loss = soft_cross_entropy(model(images), target, t.label_smoothing)
                # The mean over the step's images: each micro-batch's mean weighs 1 / accum_steps.
                (loss / t.accum_steps).backward()
                losses.append(loss.item())
            if o.clip_grad:
                clipped += clip_gradients_(list(model.parameters()), o.clip_grad)
            for group in optimizer.param_groups:
                group["lr"] = scheduled_lr(cfg, step, steps_per_epoch)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                # timm's ModelEmaV3 with step=<updates so far> uses decay 0 at the first update (a plain copy).
                decay_now = 0.0 if step == 0 else t.ema_decay
                with torch.no_grad():
                    for k, w in model.state_dict().items():
                        if w.is_floating_point():
                            ema[k].mul_(decay_now).add_(w, alpha=1 - decay_now)
                        else:
                            ema[k].copy_(w)
    finally:
        torch.set_rng_state(rng)
    assert next(micro, None) is None, "the trainer ran more micro-batches than the reference replayed"
    states = {"model": {k: v.clone() for k, v in model.state_dict().items()}}
    if ema is not None:
        states["model_ema"] = ema
    return states, decayed, losses, clipped


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    """4 classes, 2 training and 1 validation image each."""
    root = tmp_path_factory.mktemp("demo")
    return make_demo(root, num_classes=CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=1, progress=False)


@pytest.fixture(scope="module", params=sorted(CASES))
def replay(request, tiny_demo, module_tmp) -> Replay:
    """The trainer's run of one recipe and the reference loop's replay of it."""
    if torch.cuda.is_available():
        # The trainer would run on the GPU: the replay records and restores only the CPU generator, and the
        # tolerance is measured for CPU kernels.
        pytest.skip("the replay is written for a CPU run of the trainer")
    recipe, overrides = CASES[request.param]
    out = module_tmp / request.param
    cfg = load_config(RECIPES / recipe, [*COMMON, *overrides, f"data.root={tiny_demo}", f"output_dir={out}"])
    steps_per_epoch = CLASSES * TRAIN_PER_CLASS // cfg.data.batch_size
    m = cfg.model
    model = create_model(m.name, num_classes=m.num_classes, drop_path_rate=m.drop_path_rate)
    seen = record_trainer_run(cfg, type(model))
    state = torch.load(out / "last.pth", weights_only=True)
    shutil.rmtree(out)  # a few hundred MB of checkpoints; only the weights are needed
    trainer = {k: state[k] for k in ("model", "model_ema") if k in state}
    reference, decayed, losses, clipped = reference_loop(cfg, model, seen, steps_per_epoch)
    return Replay(
        cfg=cfg,
        steps_per_epoch=steps_per_epoch,
        lrs=seen["lrs"],
        decayed=seen["decayed"],
        reference_decayed=set(decayed),
        trainer_losses=seen["losses"],
        reference_losses=losses,
        trainer=trainer,
        reference=reference,
        clipped=clipped,
    )


def assert_states_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    """Every tensor of two state_dicts equal within float rounding (integer ones exactly); the message names
    the tensors furthest outside it."""
    assert got.keys() == want.keys(), what
    excess = {}
    for k, w in want.items():
        g = got[k]
        assert (g.shape, g.dtype) == (w.shape, w.dtype), f"{what}.{k}"
        if w.is_floating_point():
            excess[k] = ((g - w).abs() / (ATOL + RTOL * w.abs())).max().item()
        else:
            excess[k] = 0.0 if torch.equal(g, w) else math.inf
    bad = sorted((k for k, x in excess.items() if not x <= 1), key=lambda k: -excess[k])  # NaN is bad too
    worst = ", ".join(f"{k} ({excess[k]:.3g} x the tolerance)" for k in bad[:5])
    assert not bad, f"{what}: {len(bad)} of {len(want)} tensors differ beyond float rounding, most: {worst}"


def test_each_step_lr_follows_the_schedule(replay):
    """Every param group's lr at each optimizer step: linear scaling, warm-up, cosine or milestones, per step."""
    cfg, spe = replay.cfg, replay.steps_per_epoch
    want = [scheduled_lr(cfg, t, spe) for t in range(cfg.train.epochs * spe)]
    assert len(replay.lrs) == len(want), "optimizer steps taken"
    for t, (lrs, lr) in enumerate(zip(replay.lrs, want, strict=True)):
        assert lrs == pytest.approx([lr] * len(lrs), rel=1e-9), f"step {t}: {replay.lrs}"
    # The run must see the schedule move, or the comparison would not test it: warm-up rising, then a decay.
    assert want[-1] < max(want), want
    if cfg.schedule.warmup_epochs:
        assert want[0] < want[1], want


@pytest.mark.parametrize("replay", ["authors"], indirect=True)  # the recipe with a step schedule
def test_step_milestone_starts_at_the_epoch_boundary(replay):
    """The authors' StepLR: the lr of every step of epoch e is lr * gamma ** (milestones <= e)."""
    cfg, s = replay.cfg, replay.cfg.schedule
    assert s.name == "step" and s.milestones, s
    peak = cfg.optim.lr * cfg.data.batch_size / cfg.optim.lr_base_batch
    epochs = [t // replay.steps_per_epoch for t in range(len(replay.lrs))]
    want = [peak * s.gamma ** sum(e >= m for m in s.milestones) for e in epochs]
    assert [lrs[0] for lrs in replay.lrs] == pytest.approx(want, rel=1e-9)


def test_weight_decay_goes_where_optim_says(replay):
    """The trainer's decayed parameters are exactly the written-out ones (all, or all but norms and biases)."""
    assert replay.decayed == replay.reference_decayed


def test_weights_match_the_reference_loop(replay):
    """Every weight and BN statistic after the run as the plain loop has them, and the loss of every micro-batch
    (the first one apart tells the step where they part)."""
    if replay.cfg.optim.clip_grad:
        # Otherwise the comparison would not exercise clipping at all.
        assert replay.clipped > 0, "no step reached optim.clip_grad"
    assert_states_close(replay.trainer["model"], replay.reference["model"], "model")
    assert replay.trainer_losses == pytest.approx(replay.reference_losses, rel=1e-5)


def test_ema_matches_the_reference_loop(replay):
    """The EMA weights and BN statistics after the run (no EMA in the checkpoint when train.ema is off)."""
    assert ("model_ema" in replay.trainer) == replay.cfg.train.ema
    if replay.cfg.train.ema:
        assert_states_close(replay.trainer["model_ema"], replay.reference["model_ema"], "model_ema")
