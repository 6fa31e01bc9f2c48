"""A model's training (or inference) step against another's, measured side by side in one process.

Both models are built once and their steps alternate A, B, A, B, so drift in the machine's speed (other load,
thermal state, clocks) hits both equally. Besides speed, for each model: the bytes of activations a training
forward saves for backward (any device), and on CUDA the peak memory of one step.

An SC model's name may end in a suffix that picks its training kernels (:data:`SUFFIXES`): ``:layerwise``, the
plain layers (``set_fused(False)``, the paper's figure as drawn, close to the release's code); ``:lean``, the
lean kernels without the Triton ones (``set_fused(True, triton=False)``). A plain name is the shipped model (on
CUDA, the Triton kernels). So each kernel can be measured against the code it replaces, in one process.

On CUDA, cuDNN autotunes its convolutions (``cudnn.benchmark``), as in a training run. With a kernel table
asked for, a few more steps of each model run under ``torch.profiler`` after the timed ones
(:mod:`scnet.bench.profile`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

import scnet
from scnet.bench.profile import KernelProfile, markdown_table, profile_kernels
from scnet.models import BASELINES
from scnet.runtime.files import write_bytes_atomic
from scnet.runtime.precision import AMP_DTYPES, autocast
from scnet.runtime.seeding import use_autotuned_kernels

LAYERWISE, LEAN = ":layerwise", ":lean"
# What a suffix does to an SC model (a plain name: nothing, the shipped kernels).
SUFFIXES: dict[str, Callable[[Any], None]] = {
    LAYERWISE: lambda m: m.set_fused(False),  # the plain layers, as drawn
    LEAN: lambda m: m.set_fused(True, triton=False),  # layers/lean.py's kernels, not the Triton ones
}
# The fewest timed steps per side whose median a ratio may be given from: the median of 3 or 4 steps is one or
# two of them, and a single slow step (a page fault, another process, a late kernel choice) moves it by 10x.
MIN_STEPS_FOR_RATIO = 5
# A side whose slowest timed step took this many times its fastest ran on a noisy machine: said in the result.
NOISY_SPREAD = 1.5


def saved_activation_bytes(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp_dtype: torch.dtype | None = None
) -> int:
    """Bytes that autograd keeps for backward after one training forward of ``model`` on ``(x, y)``.

    The forward is ``cross_entropy(model(x), y)`` (under autocast when ``amp_dtype`` is given), run as the model
    is (call ``train()`` first for training-mode BN); nothing is stepped and the graph is dropped.

    Counted the way memory is spent: each storage once, at its full size. A tensor saved by several ops (an
    in-place ReLU's output, saved by the ReLU and by the next conv) and views of one tensor share a storage.
    Not counted: the model's parameters and buffers, and copies of them (autocast's low-precision weights, a
    compiler's re-laid-out weights: a saved tensor, or the base of a saved view, with a parameter's shape
    and values; not for parameters with one value throughout, such as BN's initial ones, which a computed tensor
    may equal), since they do not grow with the batch. The input ``x`` counts when an op saves it. Other
    tensors computed from parameters alone (e.g. two layers' weights concatenated in the forward) do count:
    they are memory the step holds, but a fixed amount, so bytes per image of such a model fall with the batch.

    Works on ``torch.compile``'d modules too: AOTAutograd's compiled function saves its tensors through the
    same saved-tensor hooks, so the count is what the compiled graph keeps (less where the compiler chose to
    recompute, e.g. a ReLU kept as a bool mask). A custom ``autograd.Function`` is seen when it saves with
    ``ctx.save_for_backward``; tensors stashed as plain ``ctx`` attributes bypass the hooks and are missed.
    """
    own = [*model.parameters(), *model.buffers()]
    own_storages = {t.untyped_storage().data_ptr() for t in own}
    own_by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for t in own:
        # A constant tensor (BN's initial ones and zeros) cannot be told from a computed one by its values:
        # matching it would make the count depend on the model's state (fresh or trained), so it is left out.
        if t.is_floating_point() and t.numel() > 1 and not bool((t == t.flatten()[0]).all()):
            own_by_shape.setdefault(tuple(t.shape), []).append(t.detach())
    counted: dict[int, int] = {}  # storage address -> bytes
    copies: set[int] = set()  # storages found to be copies of parameters

    def is_copy_of_own(t: torch.Tensor) -> bool:
        for candidate in (t, t._base):
            if candidate is None or not candidate.is_floating_point():
                continue
            for p in own_by_shape.get(tuple(candidate.shape), ()):
                if p.device == candidate.device and torch.equal(p.to(candidate.dtype), candidate.detach()):
                    return True
        return False

    def pack(t: torch.Tensor) -> torch.Tensor:
        # Only strided tensors have one storage to count; a model here saves nothing else.
        if t.layout == torch.strided:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            # Saved tensors stay alive with the graph until it is dropped, so an address names one storage.
            if ptr not in own_storages and ptr not in counted and ptr not in copies:
                if is_copy_of_own(t):
                    copies.add(ptr)
                else:
                    counted[ptr] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(x.device.type, amp_dtype):
            loss = F.cross_entropy(model(x), y)
    del loss  # frees the graph and what it saved
    return sum(counted.values())


def split_name(name: str) -> tuple[str, str]:
    """``"scnet50:lean"`` -> ``("scnet50", ":lean")``, ``"scnet50"`` -> ``("scnet50", "")``, after checking
    that the name can be built; ValueError (one line) otherwise."""
    base, sep, suffix = name.partition(":")
    suffix = sep + suffix
    if suffix and suffix not in SUFFIXES:
        raise ValueError(f"{name!r}: unknown suffix {suffix!r} (known: {', '.join(map(repr, SUFFIXES))})")
    known = scnet.list_models()
    if base not in known:
        close = difflib.get_close_matches(base, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; choose from {', '.join(known)}"
        raise ValueError(f"unknown model {base!r}{hint}")
    if suffix and base not in BASELINES:
        raise ValueError(f"{name!r}: {suffix!r} applies to SC models only")
    return base, suffix


def pick_baseline(model: str, vs: str | None = None) -> str:
    """The model ``model`` is compared with: ``vs`` when given, else the SC model's baseline in
    ``scnet.models.BASELINES`` (``scnet50:lean`` -> ``resnet50``); both names checked (ValueError)."""
    base, _ = split_name(model)
    if vs is None:
        if base not in BASELINES:
            raise ValueError(f"{model!r} has no default baseline (not an SC model); name one with --vs")
        vs = BASELINES[base]
    split_name(vs)
    return vs


def build_model(name: str) -> nn.Module:
    """The model ``name`` stands for: :func:`scnet.create_model` of its base name, its suffix applied."""
    base, suffix = split_name(name)
    model = scnet.create_model(base)
    if suffix:
        SUFFIXES[suffix](model)
    return model


@dataclass
class _Side:
    """One model of the comparison: its modules, the step the timing loop calls, and its measurements."""

    name: str
    module: nn.Module  # eager: for measurements that must not compile a second graph
    run: nn.Module  # what the step calls: the compiled module, or ``module`` itself
    step: Callable[[], None]
    optimizer: torch.optim.Optimizer | None
    times: list[float] = field(default_factory=list)
    kernels: KernelProfile | None = None  # when a kernel table was asked for

    def resident(self) -> list[torch.Tensor]:
        """What the model holds between steps: parameters, buffers and optimizer state (created lazily)."""
        state = [] if self.optimizer is None else list(self.optimizer.state.values())
        opt = [t for s in state for t in s.values() if isinstance(t, torch.Tensor)]
        return [*self.module.parameters(), *self.module.buffers(), *opt]


def _train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp_dtype: torch.dtype | None
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """One SGD training step (forward, cross-entropy, backward, step), closed over its model and batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    # fp16's narrow range needs loss scaling on CUDA, as a real fp16 training run does; bf16 does not.
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 and x.device.type == "cuda" else None

    def step() -> None:
        with autocast(x.device.type, amp_dtype):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)

    return step, opt


def _infer_step(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> Callable[[], None]:
    """One forward pass in inference mode (the caller has set ``eval()``)."""

    def step() -> None:
        with torch.inference_mode(), autocast(x.device.type, amp_dtype):
            model(x)

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _storage_bytes(tensors: list[torch.Tensor]) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _peak_memory(side: _Side, device: torch.device) -> int:
    """CUDA memory one step of this model needs: its peak above what was allocated before it, plus what the
    model holds between steps. The other model's weights, resident at the same time, are left out."""
    _sync(device)
    resident = _storage_bytes(side.resident())
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    side.step()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before + resident


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'' if threads == 1 else 's'})"


def _log_to_stderr(message: str) -> None:
    print(f"scnet-bench model: {message}", file=sys.stderr, flush=True)


def _check_settings(
    model: str,
    vs: str | None,
    amp: str,
    steps: int,
    warmup: int,
    batch_size: int,
    compile: bool,
    device: str | None,
    kernel_table: str | None,
    kernel_steps: int,
) -> tuple[str, torch.device]:
    """The model to compare with (``model``'s baseline by default) and the device; ValueError for bad settings."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, not {amp!r}")
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("need steps >= 1, warmup >= 0 and batch size >= 1")
    if compile and warmup < 1:
        raise ValueError("compiling needs warmup >= 1: the first step of each model compiles it")
    if kernel_table is not None and (kernel_steps < 1 or not Path(kernel_table).resolve().parent.is_dir()):
        # Said before anything is built, not after minutes of measuring.
        raise ValueError(f"a kernel table needs kernel steps >= 1 and an existing folder for {kernel_table}")
    vs = pick_baseline(model, vs)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available on this machine")
    return vs, dev


def _build_side(
    name: str,
    dev: torch.device,
    memory_format: torch.memory_format,
    train: bool,
    compile: bool,
    compile_backend: str,
    x: torch.Tensor,
    y: torch.Tensor,
    amp_dtype: torch.dtype | None,
    log: Callable[[str], None],
) -> _Side:
    """One side of the comparison: the model, what runs (compiled or not) and its step."""
    log(f"building {name} on {_device_name(dev)}")
    module = build_model(name).to(dev, memory_format=memory_format)
    module.train(train)
    run = torch.compile(module, backend=compile_backend) if compile else module
    if train:
        step, opt = _train_step(run, x, y, amp_dtype)
    else:
        step, opt = _infer_step(run, x, amp_dtype), None
    return _Side(name, module, run, step, opt)


def _saved_bytes(
    side: _Side,
    measured: str,
    train: bool,
    x: torch.Tensor,
    y: torch.Tensor,
    amp_dtype: torch.dtype | None,
    log: Callable[[str], None],
) -> int:
    """What one training forward of ``side`` saves for backward (its compiled or eager module)."""
    log(f"counting the activations {side.name} saves for backward ({measured})")
    target = side.run if measured == "compiled" else side.module
    side.module.train()
    saved = saved_activation_bytes(target, x, y, amp_dtype)
    side.module.train(train)
    return saved


def _random_batch(
    batch_size: int, image_size: int, dev: torch.device, memory_format: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random images and labels for both sides (seed 0)."""
    torch.manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev).contiguous(memory_format=memory_format)
    return x, torch.randint(0, 1000, (batch_size,), device=dev)


def _time_alternating(sides: list[_Side], steps: int, dev: torch.device) -> None:
    """``steps`` timed steps of each side, alternating, so that drift in the machine's speed hits both."""
    for _ in range(steps):
        for side in sides:
            _sync(dev)
            start = time.perf_counter()
            side.step()
            _sync(dev)
            side.times.append(time.perf_counter() - start)


def _warm_up(
    sides: list[_Side], steps: int, dev: torch.device, compile_backend: str | None, log: Callable[[str], None]
) -> None:
    """``steps`` untimed steps of each side: the first steps allocate, tune kernels and (compiled) compile."""
    for side in sides:
        log(f"warming up {side.name}: {steps} steps" + (f", compiling ({compile_backend})" if compile_backend else ""))
        _time_alternating([side], steps, dev)
        side.times.clear()


def _profile(sides: list[_Side], steps: int, dev: torch.device, log: Callable[[str], None]) -> None:
    """``steps`` more steps of each side under the profiler, after the timed ones (so never timed)."""
    for side in sides:
        log(f"profiling {steps} step{'s' if steps != 1 else ''} of {side.name}")
        side.kernels = profile_kernels(side.name, side.step, dev, steps)


def _write_kernel_table(path: str, sides: list[_Side], result: dict[str, Any]) -> None:
    """The Markdown table of both sides' kernels, titled with the settings they ran with."""
    mode = "training" if result["mode"] == "train" else "inference"
    layout = "channels_last" if result["channels_last"] else "NCHW"
    how = f"compiled ({result['compile_backend']})" if result["compile"] else "eager"
    plural = "s" if result["steps"] != 1 else ""
    note = (
        f"`scnet-bench model`: {result['device']}, batch {result['batch_size']}, {result['image_size']} px, "
        f"amp {result['amp']}, {layout}, {how}, cudnn.benchmark {'on' if result['cudnn_benchmark'] else 'off'}; "
        f"profiled after {result['warmup']} warm-up and {result['steps']} timed step{plural} of each, "
        f"{result['date']}."
    )
    profiles = [side.kernels for side in sides if side.kernels is not None]
    title = f"Kernels of one {mode} step: {result['model']} and {result['baseline']}"
    write_bytes_atomic(Path(path), (markdown_table(profiles, title, note) + "\n").encode())


def _ratio_withheld(steps: int) -> str | None:
    """Why no speed ratio can be given from ``steps`` timed steps per side (None: it can)."""
    if steps < MIN_STEPS_FOR_RATIO:
        return (
            f"{steps} timed step{' per model is' if steps == 1 else 's per model are'} too few for a stable median "
            f"(at least {MIN_STEPS_FOR_RATIO}: --steps {MIN_STEPS_FOR_RATIO})"
        )
    return None


def _summary(result: dict[str, Any]) -> str:
    """The one line the command logs at the end: both speeds with their spread, the ratio or why there is none,
    the saved bytes."""
    model, vs = result["model"], result["baseline"]
    batch = result["batch_size"]

    def speed(prefix: str) -> str:
        # img/s of the median step, and of the slowest and fastest steps.
        low, high = batch / result[f"{prefix}step_seconds_max"], batch / result[f"{prefix}step_seconds_min"]
        return f"{result[f'{prefix}images_per_second']:.1f} img/s ({low:.1f}-{high:.1f})"

    if result["ratio"] is None:
        ratio = f"no ratio: {result['ratio_withheld']}"
    else:
        ratio = f"ratio {result['ratio']:.3f} (> 1: {model} faster)"
        if result["noisy"]:
            ratio += f"; noisy: a side's slowest step took over {NOISY_SPREAD}x its fastest"
    saved = result["saved_bytes_per_image"] / 2**20, result["baseline_saved_bytes_per_image"] / 2**20
    return (
        f"{model} {speed('')}, {vs} {speed('baseline_')}; {ratio}; "
        f"saved for backward {saved[0]:.1f} vs {saved[1]:.1f} MiB/image"
    )


def _result(
    sides: list[_Side],
    saved: list[int],
    peaks: list[int | None],
    measured: str,
    dev: torch.device,
    settings: dict[str, Any],
    train: bool,
) -> dict[str, Any]:
    """The JSON-ready result of :func:`bench_model` from the two sides' step times and memory."""
    seconds = [statistics.median(side.times) for side in sides]
    ips = [settings["batch_size"] / s for s in seconds]
    per_image = [b / settings["batch_size"] for b in saved]
    withheld = _ratio_withheld(len(sides[0].times))
    kernels = [side.kernels for side in sides]  # None or a profile: ``and`` gives None or its figure
    return {
        "model": sides[0].name,
        "baseline": sides[1].name,
        "mode": "train" if train else "infer",
        "images_per_second": ips[0],
        "baseline_images_per_second": ips[1],
        "ratio": None if withheld else ips[0] / ips[1],
        "ratio_withheld": withheld,
        "step_seconds": seconds[0],
        "baseline_step_seconds": seconds[1],
        # The spread of each side's timed steps, so that a reader sees the noise behind the medians.
        "step_seconds_min": min(sides[0].times),
        "step_seconds_max": max(sides[0].times),
        "baseline_step_seconds_min": min(sides[1].times),
        "baseline_step_seconds_max": max(sides[1].times),
        "noisy": any(max(side.times) > NOISY_SPREAD * min(side.times) for side in sides),
        "saved_bytes_per_image": per_image[0],
        "baseline_saved_bytes_per_image": per_image[1],
        "saved_ratio": per_image[0] / per_image[1] if per_image[1] else None,
        "saved_bytes_measured": measured,
        "peak_memory_bytes": peaks[0],
        "baseline_peak_memory_bytes": peaks[1],
        # From the kernel table's profiled steps (CUDA: kernels, CPU: ops); None without one.
        "kernel_ms_per_step": kernels[0] and kernels[0].ms_per_step,
        "baseline_kernel_ms_per_step": kernels[1] and kernels[1].ms_per_step,
        "kernel_launches_per_step": kernels[0] and kernels[0].launches_per_step,
        "baseline_kernel_launches_per_step": kernels[1] and kernels[1].launches_per_step,
        "device": _device_name(dev),
        **settings,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def bench_model(
    model: str,
    vs: str | None = None,
    *,
    train: bool = True,
    batch_size: int = 16,
    image_size: int = 224,
    amp: str = "none",
    channels_last: bool = False,
    compile: bool = False,
    compile_backend: str = "inductor",
    device: str | None = None,
    steps: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    kernel_table: str | None = None,
    kernel_steps: int = 3,
    log: Callable[[str], None] = _log_to_stderr,
) -> dict:
    """Step time of ``model`` against ``vs``, alternated step by step in this process, and their memory.

    On CUDA, ``torch.backends.cudnn.benchmark`` is set first, as the trainer sets it (``cudnn_benchmark`` in
    the result).

    Args:
        model: a name :func:`scnet.create_model` accepts; an SC model's may end in ``:layerwise`` (the plain
            layers, ``set_fused(False)``) or ``:lean`` (``set_fused(True, triton=False)``); see :data:`SUFFIXES`.
        vs: the model to compare with, same forms; default: ``model``'s baseline in ``scnet.models.BASELINES``.
        train: time training steps (forward under autocast, cross-entropy on random labels, backward, SGD with
            momentum 0.9 and weight decay 1e-4, ``zero_grad(set_to_none=True)``); False: inference forwards
            (``eval()``, ``torch.inference_mode()``).
        amp: ``"bf16"``, ``"fp16"`` (with a GradScaler on CUDA) or ``"none"``.
        channels_last: models and input in channels_last memory format.
        compile: ``torch.compile(model, backend=compile_backend)`` for both; the warm-up steps compile.
        device: ``"cpu"`` or ``"cuda"``; default: CUDA when available.
        steps: timed steps per model, after ``warmup`` untimed ones each (the warm-up's allocations, kernel
            choices and compilation are never timed). Fewer than ``MIN_STEPS_FOR_RATIO`` give speeds but no ratio.
        threads: ``torch.set_num_threads`` first, when given.
        kernel_table: write a Markdown table of each model's longest kernels here
            (:func:`scnet.bench.profile.markdown_table`),
            from ``kernel_steps`` more steps of each after the timed ones, under ``torch.profiler`` (CUDA: kernels
            by self device time; CPU: ops by self CPU time). Its folder must exist.
        log: progress messages (default: stderr).

    Returns:
        The JSON-ready result. ``ratio`` is images per second of ``model`` over ``vs`` (> 1: ``model`` is
        faster), from median step times; None with fewer than ``MIN_STEPS_FOR_RATIO`` timed steps, and
        ``ratio_withheld`` says why. ``step_seconds_min``/``_max`` (and ``baseline_``'s) give each side's spread;
        ``noisy``: a side's slowest step took over ``NOISY_SPREAD`` times its fastest.
        ``saved_bytes_per_image``: :func:`saved_activation_bytes` of one training forward over the batch size,
        measured on the compiled module when training compiled
        (``saved_bytes_measured``: ``"compiled"``), else on the eager one (``"eager"``); ``saved_ratio`` is
        ``model``'s over ``vs``'s (> 1: ``model`` saves more). ``peak_memory_bytes`` (CUDA only, else None):
        the peak of one extra step of that model alone above what was allocated before it, plus its
        parameters, buffers and optimizer state. With ``kernel_table``: ``kernel_ms_per_step`` (the step's kernel
        time) and ``kernel_launches_per_step`` (and ``baseline_``'s), else None.

    Raises:
        ValueError: an unknown model name or suffix, no default baseline for ``model``, CUDA asked for but not
            available, or settings out of range.
    """
    vs, dev = _check_settings(model, vs, amp, steps, warmup, batch_size, compile, device, kernel_table, kernel_steps)
    if threads is not None:
        torch.set_num_threads(threads)
    cudnn_benchmark = use_autotuned_kernels(dev)
    amp_dtype = AMP_DTYPES[amp]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    x, y = _random_batch(batch_size, image_size, dev, memory_format)
    sides = [
        _build_side(name, dev, memory_format, train, compile, compile_backend, x, y, amp_dtype, log)
        for name in (model, vs)
    ]
    _warm_up(sides, warmup, dev, compile_backend if compile else None, log)

    # Saved activations of a training forward. When training compiled, the compiled module is what trains and
    # the hooks see what its graph saves; otherwise the eager module, so that an inference benchmark does not
    # compile a training graph just for this.
    measured = "compiled" if compile and train else "eager"
    saved = [_saved_bytes(side, measured, train, x, y, amp_dtype, log) for side in sides]
    peaks: list[int | None] = [None, None]
    if dev.type == "cuda":
        peaks = [_peak_memory(side, dev) for side in sides]

    log(f"timing {steps} steps of each, alternating {model} and {vs}")
    _time_alternating(sides, steps, dev)
    if kernel_table is not None:
        _profile(sides, kernel_steps, dev, log)

    # The settings as the result records them (key order: the JSON's).
    settings = {"batch_size": batch_size, "image_size": image_size, "amp": amp, "channels_last": channels_last}
    settings |= {"compile": compile, "compile_backend": compile_backend if compile else None, "steps": steps}
    settings |= {"warmup": warmup, "cudnn_benchmark": cudnn_benchmark, "kernel_table": kernel_table}
    settings["kernel_steps"] = kernel_steps if kernel_table is not None else None
    result = _result(sides, saved, peaks, measured, dev, settings, train)
    if kernel_table is not None:
        _write_kernel_table(kernel_table, sides, result)
        log(f"kernel table: {kernel_table}")
    log(_summary(result))
    return result
