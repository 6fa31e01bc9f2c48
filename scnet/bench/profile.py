"""Where a step's time goes, kernel by kernel: a few steps of a model under ``torch.profiler``, and a Markdown
table of its longest kernels beside another model's.

On CUDA only the GPU is profiled (``ProfilerActivity.CUDA``): every kernel, copy and fill the steps launched,
timed on the device, so the table shows what each kernel costs and how many a step launches. On CPU the ops
are profiled (``ProfilerActivity.CPU``) and timed by their self CPU time (an op's time less its children's), so
that the same table is made, and tested, without a GPU. Either way the profiler's own annotations
(``record_function`` ranges such as ``Optimizer.step#SGD.step``) are left out: they are not kernels, and on
CPU their self time is Python's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

TOP_KERNELS = 25  # rows per model in the table; the rest is one "all other" row
NAME_WIDTH = 90  # characters of a kernel's name shown


@dataclass(frozen=True)
class Kernel:
    """One kernel (CUDA) or op (CPU) over the profiled steps: its calls and its self time in microseconds."""

    name: str
    calls: int
    self_us: float


@dataclass
class KernelProfile:
    """What ``steps`` profiled steps of ``model`` ran on ``device`` (``"cuda"``: kernels, self device time;
    ``"cpu"``: ops, self CPU time), longest first."""

    model: str
    device: str
    steps: int
    kernels: list[Kernel]

    @property
    def ms_per_step(self) -> float:
        """The step's kernel time: the self times of all its kernels, which do not overlap (one stream)."""
        return sum(k.self_us for k in self.kernels) / 1000 / self.steps

    @property
    def launches_per_step(self) -> float:
        """Kernels launched (CPU: ops called) per step."""
        return sum(k.calls for k in self.kernels) / self.steps


def summarize(model: str, events: Iterable[Any], device: str, steps: int) -> KernelProfile:
    """The profile of ``events`` (``profiler.key_averages()``: one entry per name, with ``key``, ``count``,
    ``device_type``, ``is_user_annotation`` and self times in microseconds) from ``steps`` steps.

    On ``"cuda"`` the entries timed on the GPU count, by their self device time; on ``"cpu"`` the CPU ones, by
    their self CPU time. Annotations are left out (module docstring).
    """
    on_gpu = device == "cuda"
    kernels = []
    for e in events:
        if e.device_type != (DeviceType.CUDA if on_gpu else DeviceType.CPU) or getattr(e, "is_user_annotation", False):
            continue
        if e.count:
            kernels.append(Kernel(e.key, e.count, float(e.self_device_time_total if on_gpu else e.self_cpu_time_total)))
    kernels.sort(key=lambda k: (-k.self_us, k.name))
    return KernelProfile(model, device, steps, kernels)


def profile_kernels(model: str, step: Callable[[], None], device: torch.device, steps: int = 3) -> KernelProfile:
    """Run ``step`` ``steps`` times under ``torch.profiler`` (CUDA activity on CUDA, else CPU) and summarize.

    Call it after warm-up steps: the first steps of a model allocate memory, and on CUDA let cuDNN choose its
    algorithms, which would be profiled as the step's kernels.
    """
    if steps < 1:
        raise ValueError(f"need at least one profiled step, not {steps}")
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize(device)  # kernels queued before the profiler starts are not the step's
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        if on_gpu:
            torch.cuda.synchronize(device)  # every kernel of the steps has run before the profiler stops
    return summarize(model, prof.key_averages(), device.type, steps)


def short_kernel_name(name: str, width: int = NAME_WIDTH) -> str:
    """A kernel's name as a table shows it: a C++ signature without its return type, argument lists and
    namespaces (``void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>,
    ...>(int, ...)`` -> ``vectorized_elementwise_kernel<4, CUDAFunctor_add<BFloat16>, ...>``); an op's name
    (``aten::convolution``, ``scnet::calibrated_conv``) as it is. Cut to ``width`` characters with an ellipsis."""
    if name.startswith("void ") or "(" in name or "<" in name:
        name = name.removeprefix("void ").replace("(anonymous namespace)::", "")
        while True:  # argument lists, innermost first: (int, ...) and lambdas' {lambda(int)#1}
            shorter = re.sub(r"\([^()]*\)", "", name)
            if shorter == name:
                break
            name = shorter
        name = re.sub(r"\b[A-Za-z_]\w*::", "", name)
        name = re.sub(r"\s+", " ", name).replace("> >", ">>").strip()
    return name if len(name) <= width else name[: width - 1] + "…"


def _count(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # a bar would end its cell


def _side_table(p: KernelProfile, top: int, unit: str) -> list[str]:
    """The ``top`` longest kernels of one model, and one row for the rest."""
    total = sum(k.self_us for k in p.kernels) or 1.0

    def figures(calls: int, us: float) -> list[str]:  # per step, and the share of the step's kernel time
        return [_count(calls / p.steps), f"{us / 1000 / p.steps:.2f}", f"{100 * us / total:.1f}"]

    lines = [f"## {p.model}: the {min(top, len(p.kernels))} longest of {len(p.kernels)} {unit}s", ""]
    lines += [_row(["#", unit, "calls/step", "ms/step", f"% of {unit} time"]), "|---:|---|---:|---:|---:|"]
    for i, k in enumerate(p.kernels[:top], 1):
        lines.append(_row([i, f"`{short_kernel_name(k.name)}`", *figures(k.calls, k.self_us)]))
    rest = p.kernels[top:]
    if rest:
        others = figures(sum(k.calls for k in rest), sum(k.self_us for k in rest))
        lines.append(_row(["", f"all other {len(rest)}", *others]))
    return lines + [""]


def markdown_table(profiles: Sequence[KernelProfile], title: str, note: str = "", top: int = TOP_KERNELS) -> str:
    """Markdown: ``title``, ``note``, each profile's kernel time and launches per step side by side, then each
    one's ``top`` longest kernels (name, calls per step, ms per step, % of its kernel time) and the rest."""
    device = profiles[0].device
    unit = "kernel" if device == "cuda" else "op"
    timed = "self device time (CUDA)" if device == "cuda" else "self CPU time"
    steps = profiles[0].steps
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += [
        f"{steps} profiled step{'s' if steps != 1 else ''} of each model (torch.profiler), {timed}, per step. "
        + ("Kernels include copies and fills." if device == "cuda" else "Ops at every level of the call tree."),
        "",
        _row(["", *(p.model for p in profiles)]),
        "|---|" + "---:|" * len(profiles),
        _row([f"{unit} time, ms per step", *(f"{p.ms_per_step:.2f}" for p in profiles)]),
        _row(
            [f"{unit}s {'launched' if device == 'cuda' else 'called'} per step"]
            + [_count(p.launches_per_step) for p in profiles]
        ),
        "",
    ]
    for p in profiles:
        lines += _side_table(p, top, unit)
    return "\n".join(lines)
