#!/usr/bin/env python
"""The two Python ends of ``scripts/bench_gpu.sh``: what the machine is, and the Markdown report of a run.

    python scripts/bench_gpu_report.py env --json RUN/env.json --device cuda --models scnet50 resnet50 \\
        --setting batch_size=256 ...
    python scripts/bench_gpu_report.py render RUN          # prints the report and writes RUN/report.md

``env`` fails (exit 2, one line) when the run cannot work: a model name that does not exist (or a suffix
scnet-bench does not know), a model without a baseline of its own and no ``--baseline``, or ``--device cuda``
without a usable GPU; it then writes nothing. It records each model's baseline (``baselines``).

``render`` reads the run folder that bench_gpu.sh fills: ``steps.tsv`` (one line per step: name, status,
seconds; the rows of the report, in order), ``json/<step>.json`` (each step's raw result; ``json/kernels.json``:
the kernel check's; ``json/loader.json``: scnet-bench data's rows), ``json/<step>.kernels.md`` (a step's kernel
table, included), ``env.json``, and ``train-run-cpu/`` and ``train-run-gpu/`` (the scnet-train runs of each
``data.decode``: ``metrics.jsonl`` and TensorBoard events). A step that failed or was skipped is a row that says
so, never a missing row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

GIB, MIB = 1024**3, 1024**2
# The goals the report checks (BENCHMARKS.md, "GPU run"): SCNet-50 training on one H100.
GOAL_IMAGES_PER_SECOND = 3500
GOAL_RATIO = {"eager": 0.9, "compiled": 1.0}
GOAL_REAL_VS_SYNTHETIC = 0.9  # real-JPEG training within 10% of the synthetic-input figure
GOAL_MODEL = "scnet50"
_MODES, _VARIANTS = ("train", "infer"), ("eager", "compiled")
_PARITY_VARIANTS = ("shipped", "lean", "plain")  # scnet-bench kernels' sets of kernels, in its JSON


# ----------------------------------------------------------------------------------------------- env


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    return _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])


# Every option bench_gpu.sh gives each command, checked against the installed parsers before anything runs.
_CLI_CHECKS = {
    "scnet-bench": [
        ["model", "--model", "a", "--vs", "b", "--train", "--amp", "bf16", "--channels-last", "--batch-size", "2"]
        + ["--image-size", "112", "--device", "cpu", "--steps", "1", "--warmup", "1", "--threads", "1"]
        + ["--json", "a.json", "--compile", "--compile-backend", "eager"],
        ["model", "--model", "a", "--vs", "b", "--infer"],
        ["model", "--model", "a:lean", "--train", "--kernel-table", "a.kernels.md", "--kernel-steps", "1"],
        ["kernels", "--model", "a", "--amp", "none", "--batch-size", "2", "--image-size", "112", "--device", "cpu"]
        + ["--conv-batch-size", "2", "--conv-image-size", "32", "--threads", "1", "--json", "a.json"],
        ["data", "--data", "d", "--decode", "cpu,gpu", "--workers", "1", "4", "--batches", "1", "--batch-size", "2"]
        + ["--warmup", "1", "--repeats", "1", "--image-size", "112", "--model", "a", "--amp", "bf16"]
        + ["--channels-last", "--device", "cpu", "--json", "a.json"],
    ],
    "scnet-train": [["--config", "a.yaml", "train.epochs=1", "data.decode=gpu"]],
    "python -m scnet.data.synthetic": [
        ["--out", "d", "--classes", "1", "--per-class", "1", "--val-per-class", "1", "--size", "500x375"]
        + ["--quality", "90", "--workers", "1", "--json", "a.json"]
    ],
}


def check_cli() -> None:
    """Raise ValueError naming the command whose parser rejects an option that bench_gpu.sh uses."""
    import contextlib
    import io

    from scnet.cli import bench, train
    from scnet.data import synthetic

    parsers = {
        "scnet-bench": bench.build_parser().parse_args,
        "scnet-train": train.build_parser().parse_intermixed_args,
        "python -m scnet.data.synthetic": synthetic.build_parser().parse_args,
    }
    for command, vectors in _CLI_CHECKS.items():
        for argv in vectors:
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err):
                    parsers[command](argv)
            except SystemExit:
                last = err.getvalue().strip().splitlines()[-1:] or ["?"]
                raise ValueError(f"{command} {argv[0]}: {last[0]}") from None


def collect_env(args: argparse.Namespace) -> dict:
    """The machine, the software and the settings; raises ValueError when the run cannot work here."""
    try:
        import torch

        import scnet
    except ImportError as e:
        raise ValueError(
            f"{sys.executable} cannot import {e.name}: install the project (pip install -e .) for this python, "
            "or name the right one with PYTHON=..."
        ) from None
    check_cli()
    baselines = pair_baselines(args.models, args.baseline)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no usable GPU (use --dry-run on a CPU machine)")
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()})"
    settings = {}
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--setting wants key=value, got {item!r}")
        settings[key] = value
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": args.device,
        "device_name": device_name,
        "nvidia_smi": _nvidia_smi(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "scnet": scnet.__version__,
        "python": platform.python_version(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "host": platform.node(),
        "git": _run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"]),
        "baselines": baselines,
        "settings": settings,
    }


def pair_baselines(models: Sequence[str], baseline: str | None) -> dict[str, str]:
    """Each model's baseline as scnet-bench picks it (``baseline``, else its own); ValueError naming the models
    that do not exist or have no baseline of their own."""
    from scnet.bench.model import pick_baseline

    pairs, errors = {}, []
    for model in models:
        try:
            pairs[model] = pick_baseline(model, baseline)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("; ".join(dict.fromkeys(errors)))  # a wrong --baseline fails each model alike
    return pairs


# ----------------------------------------------------------------------------------------------- render


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_steps(run: Path) -> list[dict]:
    """``steps.tsv``: name, status (ok, failed (rc N), skipped: why), seconds."""
    steps = []
    try:
        lines = (run / "steps.tsv").read_text().splitlines()
    except OSError:
        return steps
    for line in lines:
        parts = line.split("\t")
        if len(parts) >= 3:
            steps.append({"name": parts[0], "status": parts[1], "seconds": parts[2]})
    return steps


def _num(value, digits: int | None = None, scale: float = 1.0) -> str:
    """``value / scale`` with ``digits`` decimals; by default none from 100 up, so that a dry run's 0.5 img/s
    still reads as a number."""
    if value is None:
        return "—"
    value = value / scale
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _not_measured(step: dict) -> str:
    status = step["status"]
    return f"{status} (logs/{step['name']}.log)" if status.startswith("failed") else status


def steady_images_per_second(run_dir: Path, batch_size: int) -> tuple[float | None, int | None, int | None]:
    """Training img/s between the first and the last logged step (TensorBoard wall times), and those steps.

    ``metrics.jsonl``'s figure is the whole epoch, worker start-up and first-step set-up included; this
    one leaves out everything before the first log point.
    """
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        events = acc.Scalars("train/images_per_second")
    except Exception:  # noqa: BLE001 - no events, no tensorboard, another layout: the column says "—"
        return None, None, None
    if len(events) < 2 or events[-1].wall_time <= events[0].wall_time:
        return None, None, events[-1].step if events else None
    first, last = events[0], events[-1]
    return (last.step - first.step) * batch_size / (last.wall_time - first.wall_time), first.step, last.step


def render(run: Path) -> str:
    """The Markdown report of the run folder ``run``."""
    env = _read_json(run / "env.json") or {}
    settings = env.get("settings", {})
    steps = read_steps(run)
    by_name = {s["name"]: s for s in steps}
    dry = settings.get("dry_run") == "1"
    out = ["# SCNet GPU benchmark (scripts/bench_gpu.sh)", ""]
    if dry:
        out += [
            "**DRY RUN** (`--dry-run`): CPU, tiny sizes. The figures below only show that every path works; "
            "they measure nothing.",
            "",
        ]
    smi = f" (nvidia-smi: {env['nvidia_smi']})" if env.get("nvidia_smi") else ""
    tuned = ", cudnn.benchmark" if env.get("device") == "cuda" else ""  # scnet-bench sets it on CUDA
    out += [
        f"- device: {env.get('device_name', '?')}{smi}; {env.get('cpu_cores', '?')} CPU cores",
        f"- torch {env.get('torch', '?')} (CUDA {env.get('cuda') or '—'}, cuDNN {env.get('cudnn') or '—'}), "
        f"scnet {env.get('scnet', '?')} (git {env.get('git') or '?'}), Python {env.get('python', '?')}",
        f"- date: {env.get('date', '?')}; run folder: {run}",
        f"- settings: batch {settings.get('batch_size', '?')}, {settings.get('image_size', '?')} px, "
        f"amp {settings.get('amp', '?')}, channels_last{tuned}, warm-up {settings.get('warmup', '?')} + "
        f"{settings.get('steps', '?')} measured steps, compile backend {settings.get('compile_backend', '?')}",
        "",
    ]

    if "kernels" in by_name:
        out += _parity_section(run, by_name["kernels"])
    model_lines, results = _models_section(run, steps, env)
    out += model_lines

    # Data: the JPEG set, who waits (the loader's decode paths and worker counts), the training runs.
    out += _data_section(run, by_name)
    synthetic = results.get(("train", "eager", settings.get("train_model", GOAL_MODEL)))
    train_lines, real = _train_runs_section(run, steps, settings, synthetic)
    out += train_lines

    out += ["## Goals (BENCHMARKS.md, GPU run)", ""]
    if dry:
        out += ["Not judged: dry run.", ""]
    else:
        out += _goals(results, real, synthetic)
        out += [""]

    out += ["## Steps", ""]
    out += _table(["step", "status", "seconds"], [[s["name"], s["status"], s["seconds"]] for s in steps], 2)
    out += [""]
    return "\n".join(out)


def _data_section(run: Path, by_name: dict[str, dict]) -> list[str]:
    """The JPEG set written, and who waits: the loader's rows (scnet-bench data, json/loader.json)."""
    out = []
    gen = by_name.get("jpeg-gen")
    if gen is not None:
        g = _read_json(run / "json" / "jpeg-gen.json") if gen["status"] == "ok" else None
        if g is None:
            row = ["JPEG set (scnet.data.synthetic)", _not_measured(gen), "—"]
        else:
            what = (
                f"{g['files']:,} files, {g['size']} / turned, q{g['quality']}, {g['mean_kb']:.0f} kB avg, "
                f"{g['workers']} processes"
            )
            row = ["JPEG set written (scnet.data.synthetic)", what, _num(g["images_per_second"])]
        out += ["## Data on the generated JPEGs", ""]
        out += _table(["what", "settings", "img/s"], [row], right_from=2)
        out += [""]
    loader = by_name.get("loader")
    if loader is not None:
        out += _loader_section(run, loader)
    return out


def _wait(share) -> str:
    return "—" if share is None else f"{share * 100:.1f}%"


def _loader_section(run: Path, step: dict) -> list[str]:
    """Who waits (scnet-bench data): the input path's img/s per decode path and worker count beside
    torchvision's, and the training loop's img/s and data wait fed by each."""
    out = ["## Who waits: the input path on the generated JPEGs (scnet-bench data)", ""]
    rows = _read_json(run / "json" / "loader.json") if step["status"] == "ok" else None
    if not isinstance(rows, list) or not rows:
        why = _not_measured(step) if step["status"] != "ok" else "ok, but no rows in json/loader.json"
        return out + [f"Not measured: {why}.", ""]
    table = []
    for r in rows:
        ips = _num(r.get("images_per_second"))
        if r.get("skipped"):
            ips = f"not measured: {r['skipped']}"
        batches = f"{r.get('warmup', '?')} + {r.get('batches', '?')}"
        cells = [r.get("loader", "?"), r.get("decode", "?"), str(r.get("workers", "?")), batches, ips]
        cells += [_num(r.get("images_per_second_per_worker")), _num(r.get("vs_torchvision"), 2)]
        cells += [_num(r.get("train_images_per_second")), _wait(r.get("wait_share")), r.get("decoded_by", "?")]
        table.append(cells)
    header = ["loader", "decode", "workers", "batches", "img/s", "img/s per worker", "vs torchvision", "train img/s"]
    lines = _table([*header, "data wait", "decoded by"], table, right_from=3)
    lines[1] = lines[1].removesuffix("---:|") + "---|"  # the last column is words
    out += lines
    first = rows[0]
    model = first.get("model")
    trained = f"; train img/s and data wait: a training loop of {model}" if model else ""
    if model:
        layout = "channels_last" if first.get("channels_last") else "NCHW"
        trained += f" (amp {first.get('amp', '?')}, {layout}) fed by that loader"
    out += [
        "",
        f"img/s: files to normalised float images on {first.get('device', '?')} (batch {first.get('batch_size', '?')}, "
        f"{first.get('image_size', '?')} px; batches: warm-up + measured; median of {first.get('repeats', '?')}); "
        f"vs torchvision: against ImageFolder + PIL at the same worker count{trained}; data wait: the share of its "
        "time spent waiting for the next batch (next() and the device-side decode), as scnet-train's data_wait "
        "counts it.",
    ]
    if any(r.get("stand_in") for r in rows):
        out.append("decode gpu on a CPU device: torchvision's CPU decoder stands in for nvjpeg (the same code path).")
    return out + [""]


def _train_run_row(run: Path, step: dict, settings: dict, syn: float | None) -> tuple[list[str], float | None]:
    """One training run's row (step train-run-DECODE, its folder of the same name), and its img/s."""
    name = step["name"]
    model, decode = settings.get("train_model", GOAL_MODEL), name.removeprefix("train-run").lstrip("-") or "auto"
    metrics = None
    if step["status"] == "ok":
        try:
            lines = (run / name / "metrics.jsonl").read_text().splitlines()
            metrics = json.loads(lines[-1]) if lines else None
        except (OSError, ValueError):
            metrics = None
    if metrics is None:
        why = _not_measured(step) if step["status"] != "ok" else "ok, but no metrics.jsonl"
        return [model, decode, "—", why, "—", "—", "—", _num(syn), "—", "—"], None
    batch = int(settings.get("batch_size", "0") or 0)
    steady, first, last = steady_images_per_second(run / name, batch)
    real = metrics.get("images_per_second")
    steps_text = str(last) if last is not None else settings.get("train_steps", "?")
    steady_text = f"{_num(steady)} (steps {first}–{last})" if steady is not None else "—"
    ratio = f"{real / syn:.2f}" if real and syn else "—"
    if steady and syn:
        ratio += f" ({steady / syn:.2f} after first log)"
    on_cpu = "—"
    if "decoded_on_cpu" in metrics:
        on_cpu = f"{metrics['decoded_on_cpu']} / {metrics.get('left_out', 0)}"
    # Start-up: the epoch's time beyond its images at the steady rate (workers starting, the first batches, cuDNN's
    # autotuning): the "first training step", without a clock inside the trainer.
    startup = "—"
    if steady and real and metrics.get("epoch_time"):
        epoch_time = float(metrics["epoch_time"])
        startup = f"{max(epoch_time - real * epoch_time / steady, 0.0):.1f}"
    row = [model, decode, steps_text, _num(real), steady_text, startup, _wait(metrics.get("data_wait", 0))]
    return row + [_num(syn), ratio, on_cpu], real


def _train_runs_section(
    run: Path, steps: list[dict], settings: dict, synthetic: dict | None
) -> tuple[list[str], dict[str, float]]:
    """The training runs on the generated JPEGs (steps train-run-cpu and train-run-gpu), and their img/s by
    decode path."""
    runs = [s for s in steps if s["name"] == "train-run" or s["name"].startswith("train-run-")]
    if not runs:
        return [], {}
    syn = synthetic.get("images_per_second") if synthetic else None
    rows, real = [], {}
    for step in runs:
        row, ips = _train_run_row(run, step, settings, syn)
        rows.append(row)
        if ips:
            real[row[1]] = ips
    header = ["model", "decode", "steps", "img/s (metrics.jsonl)", "img/s after first log", "start-up (s)", "data wait"]
    header += ["synthetic img/s (train, eager)", "real / synthetic", "decoded on CPU / left out"]
    out = ["## Training runs on the generated JPEGs (scnet-train, eager)", ""]
    out += _table(header, rows, right_from=2)
    out += [
        "",
        "One run per data.decode: cpu (the loader workers decode) and gpu (the workers read the bytes, the device "
        "decodes). img/s and data wait (share of the epoch spent waiting for a batch) are metrics.jsonl's, over the "
        "whole epoch including worker start-up; 'after first log' leaves out the steps before the first log point "
        "(TensorBoard wall times); start-up: the epoch's time beyond its images at that steady rate (workers "
        "starting, the first batches, cuDNN's autotuning). Decoded on CPU / left out (gpu): files the device decoder "
        "was not given or refused, and files nothing decoded.",
        "",
    ]
    return out, real


def step_model(part: str) -> str:
    """The model of a step name's last part: bench_gpu.sh writes a suffix's ':' as '.' (scnet50.lean)."""
    return part.replace(".", ":", 1)


def _model_row(
    run: Path, step: dict, model: str, baseline: str, mode: str, variant: str
) -> tuple[list[str], dict | None]:
    """One row of the models' table, and the step's raw result (None when it has none)."""
    r = _read_json(run / "json" / f"{step['name']}.json") if step["status"] == "ok" else None
    if r is None:
        why = _not_measured(step) if step["status"] != "ok" else "ok, but no JSON"
        return [model, baseline, mode, variant, why] + ["—"] * 6, None
    figures = [
        _num(r.get("images_per_second")),
        _num(r.get("baseline_images_per_second")),
        _num(r.get("ratio"), 2),
        _num(r.get("peak_memory_bytes"), 1, GIB),
        _num(r.get("baseline_peak_memory_bytes"), 1, GIB),
        _num(r.get("saved_bytes_per_image"), 1, MIB),
        _num(r.get("baseline_saved_bytes_per_image"), 1, MIB),
    ]
    return [model, r.get("baseline", baseline), mode, variant, *figures], r


def _models_section(run: Path, steps: list[dict], env: dict) -> tuple[list[str], dict]:
    """The models' table (each against its own baseline, or the run's --baseline), the kernel tables the steps
    wrote, and the raw results by (mode, variant, model)."""
    settings = env.get("settings", {})
    model_steps = []
    for step in steps:
        parts = step["name"].split("-", 2)
        if len(parts) == 3 and parts[0] in _MODES and parts[1] in _VARIANTS:
            model_steps.append(((parts[0], parts[1], step_model(parts[2])), step))
    if not model_steps:
        return [], {}
    # Grouped as the reader compares them (train eager, train compiled, infer ...), models in the run's order.
    models = list(dict.fromkeys(key[2] for key, _ in model_steps))
    model_steps.sort(key=lambda item: (_MODES.index(item[0][0]), _VARIANTS.index(item[0][1]), models.index(item[0][2])))
    rows, results, kernels = [], {}, []
    for (mode, variant, model), step in model_steps:
        # A step without a result still names its baseline: the one the preflight paired it with.
        baseline = env.get("baselines", {}).get(model) or settings.get("baseline") or "—"
        row, r = _model_row(run, step, model, baseline, mode, variant)
        rows.append(row)
        if r is not None:
            results[(mode, variant, model)] = r
        if (run / "json" / f"{step['name']}.kernels.md").is_file():
            kernels.append(step["name"])
    override = settings.get("baseline")
    against = f"against {override}" if override else "each against its own baseline"
    out = [f"## Models on synthetic input, {against} (scnet-bench model)", ""]
    header = ["model", "baseline", "mode", "eager/compiled", "img/s", "baseline img/s", "ratio", "peak GiB"]
    header += ["baseline peak GiB", "saved MiB/img", "baseline saved MiB/img"]
    out += _table(header, rows, right_from=4)
    out += [
        "",
        "ratio = img/s / baseline img/s (> 1: faster than the baseline; — when too few steps were timed for a "
        "stable median, as in a dry run). MODEL:layerwise runs the plain layers, MODEL:lean the lean kernels "
        "without the Triton ones, MODEL alone the shipped kernels. Peak GiB: the CUDA allocator's peak "
        "(— on CPU). Saved MiB/img: what a training forward keeps for backward, per image (compiled rows of "
        "train: the compiled graph's; the other rows: the eager model's).",
        "",
    ]
    for name in kernels:
        out += _kernel_section(run, name)
    return out, results


def _kernel_section(run: Path, step: str) -> list[str]:
    """A step's kernel table (json/STEP.kernels.md), its headings one level down under this report's."""
    path = Path("json") / f"{step}.kernels.md"
    text = (run / path).read_text().strip().splitlines()
    lines = ["#" + line if line.startswith("#") else line for line in text]
    return lines[:1] + ["", f"Step {step}, [{path}]({path}):"] + lines[1:] + [""]


def _error(value) -> str:
    """A relative error, in scientific notation (they span 1e-16 to 1e-1)."""
    return "—" if value is None else f"{value:.1e}"


def _errors_cells(e: dict) -> list[str]:
    """Logits error, median gradient error, largest gradient error (and its parameter, unless all are 0) of one
    variant."""
    worst = _error(e.get("grad_max"))
    if e.get("grad_max"):
        worst += f" (`{e.get('grad_max_param', '?')}`)"
    return [_error(e.get("logits")), _error(e.get("grad_median")), worst]


def _parity_section(run: Path, step: dict) -> list[str]:
    """The kernel check (scnet-bench kernels, json/kernels.json): each variant's errors against the float64
    step, the float32 comparison, the repeatability, and SC-ResNeXt's grouped 3x3s timed."""
    out = ["## Kernel parity (scnet-bench kernels)", ""]
    k = _read_json(run / "json" / "kernels.json") if step["status"] == "ok" else None
    if k is None:
        why = _not_measured(step) if step["status"] != "ok" else "ok, but no JSON"
        return out + [f"Not measured: {why}.", ""]
    out += [
        f"One training step of {k.get('model', '?')} (batch {k.get('batch_size', '?')}, {k.get('image_size', '?')} "
        f"px, amp {k.get('amp', '?')}, on {k.get('device', '?')}) by each set of kernels, against the plain layers' "
        "float64 step: relative L2 errors of the logits and of the parameter gradients (median and largest over "
        "the parameters). shipped: what training runs here; lean: the lean kernels without the Triton ones; plain: "
        "the plain layers (set_fused(False)).",
        "",
    ]
    header = ["variant", "kernels", "logits error", "gradient error, median", "gradient error, max (parameter)"]
    rows = [[name, k[name].get("kernels", "?"), *_errors_cells(k[name])] for name in _PARITY_VARIANTS if name in k]
    out += _table(header, rows, right_from=2)
    out += [""]
    if "shipped_float32" in k:
        cells = _errors_cells(k["shipped_float32"])
        out.append(
            "- shipped_float32 (the shipped step without autocast against the plain layers' float32 step: "
            f"rounding only): logits {cells[0]}, gradients median {cells[1]}, max {cells[2]}"
        )
    if "running_stats_error" in k:
        out.append(
            "- running_stats_error (the BN running statistics after the shipped and the plain float32 steps, "
            f"largest relative difference): {_error(k['running_stats_error'])}"
        )
    if "repeatable" in k:
        said = "yes" if k["repeatable"] else "**no**"
        out.append(
            "- repeatable (the shipped step twice from the same state, cuDNN deterministic: bit-identical logits "
            f"and gradients): {said}"
        )
    out += [""]
    convs = k.get("grouped_convs")
    out += ["## SC-ResNeXt grouped 3x3s (scnet-bench kernels)", ""]
    if not convs:
        return out + ["Not measured (--conv-batch-size 0).", ""]
    rows = [
        [
            str(c["stage"]),
            str(c["channels"]),
            str(c["size"]),
            _num(c["two_convs_seconds"], scale=1e-3),
            _num(c["one_conv_seconds"], scale=1e-3),
            _num(c["speedup"], 2),
        ]
        for c in convs
    ]
    dtype = "float32" if k.get("amp") == "none" else k.get("amp", "?")
    out += _table(["stage", "channels", "size", "two convs ms", "one conv ms", "speedup"], rows, right_from=1)
    out += [
        "",
        f"Forward + backward of a stage's two half-width grouped 3x3s (k1 and k3, {dtype}, channels_last, "
        "at the stage's stride-1 map size), as two convolutions and as one of twice the groups over both halves; "
        "median ms. speedup = two convs / one conv (> 1: one convolution is faster).",
        "",
    ]
    return out


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def _goals(results: dict, real: dict[str, float], synthetic: dict | None) -> list[str]:
    lines = []
    train = {v: results.get(("train", v, GOAL_MODEL)) for v in ("eager", "compiled")}
    figures = {v: r["images_per_second"] for v, r in train.items() if r and r.get("images_per_second")}
    best = max(figures.values()) if figures else None
    which = ", ".join(f"{v} {_num(x)}" for v, x in figures.items()) or "—"
    ok = None if best is None else best >= GOAL_IMAGES_PER_SECOND
    lines.append(f"- {GOAL_MODEL} training >= {GOAL_IMAGES_PER_SECOND:,} img/s ({which}): {_verdict(ok)}")
    for variant, goal in GOAL_RATIO.items():
        r = train[variant]
        ratio = r.get("ratio") if r else None
        ok = None if ratio is None else ratio >= goal
        lines.append(f"- {GOAL_MODEL} training, {variant}: ratio >= {goal} ({_num(ratio, 2)}): {_verdict(ok)}")
    syn = synthetic.get("images_per_second") if synthetic else None
    best = max(real.values()) if real else None
    ok = None if not (best and syn) else best >= GOAL_REAL_VS_SYNTHETIC * syn
    shown = ", ".join(f"decode {d} {ips / syn:.2f}" for d, ips in real.items()) if real and syn else "—"
    lines.append(f"- real-JPEG training within 10% of synthetic (metrics.jsonl, {shown}): {_verdict(ok)}")
    return lines


# ----------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_gpu_report.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env", help="check that the run can work here and write the machine's description")
    p.add_argument("--json", required=True, metavar="FILE", help="where the machine's description is written")
    p.add_argument("--device", choices=["cpu", "cuda"], required=True, help="the device the run measures")
    p.add_argument("--models", nargs="+", required=True, help="every model the run compares with its baseline")
    p.add_argument("--baseline", help="the one model all are compared with (default: each model's own)")
    p.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE", help="recorded in the report")
    p = sub.add_parser("render", help="print the Markdown report of a run folder and write RUN/report.md")
    p.add_argument("run", help="the run folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "env":
        try:
            env = collect_env(args)
        except ValueError as e:
            print(f"bench_gpu_report.py env: error: {e}", file=sys.stderr)
            return 2
        Path(args.json).write_text(json.dumps(env, indent=2) + "\n")
        print(f"{env['device_name']}, torch {env['torch']}, {env['cpu_cores']} CPU cores")
        return 0
    run = Path(args.run)
    report = render(run)
    (run / "report.md").write_text(report)
    print(report, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
