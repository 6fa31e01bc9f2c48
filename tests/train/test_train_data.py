"""The trainer's data, through the real CLI: where it comes from (a path that exists, or the built-in demo set by
name), how its val split is labelled (by the training classes) and counted (bad files skipped, never twice),
and a warm-up as long as the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.scheduler import create_scheduler_v2

from scnet.cli.eval import main as eval_main
from scnet.cli.train import main as train_main
from scnet.config import load_config
from scnet.data.demo import make_demo

from ..inference import crafted_state_dict

REPO = Path(__file__).parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAVOURED = 5  # the crafted classifier predicts training class 5, 05_ring, for every image


def _overrides(root: Path | str, out: Path, *extra: str) -> list[str]:
    """20 train images at batch 4: 5 steps; the quickstart's schedule (cosine, 1 warm-up epoch) is kept."""
    return [
        f"data.root={root}",
        "data.batch_size=4",
        "data.workers=0",
        f"output_dir={out}",
        "train.epochs=1",
        "train.deterministic=true",
        "train.tensorboard=false",
        *extra,
    ]


def _metrics(out: Path) -> dict:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def _eval(capsys, tmp_path: Path, *args) -> dict:
    """scnet-eval (in-process) at the trainer's batch size; returns its JSON."""
    out_json = tmp_path / f"eval{len(list(tmp_path.glob('eval*.json')))}.json"
    code = eval_main([*map(str, args), "--workers", "0", "--batch-size", "4", "--json", str(out_json)])
    err = capsys.readouterr().err
    assert code == 0, err
    return json.loads(out_json.read_text())


# --------------------------------------------------------------------------------------------------
# 1. A data path is never invented


@pytest.mark.slow
def test_mistyped_data_root_is_one_line_and_creates_nothing(tmp_path):
    typed = tmp_path / "imagnet"
    cmd = [sys.executable, "-m", "scnet.cli.train", "--config", str(QUICKSTART)]
    proc = subprocess.run(
        [*cmd, f"data.root={typed}", f"output_dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # where data/demo would be drawn, if anything were
        env=ENV,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"scnet-train: error: data.root: {typed}: no such folder\n"
    assert list(tmp_path.iterdir()) == []  # no images at the typed path, no output_dir, no data/demo


@pytest.mark.slow
def test_demo_by_name_is_the_set_at_data_demo(tmp_path, monkeypatch, capsys):
    """`data.root=demo` trains on <cwd>/data/demo, completing it with its own sizes (not the default 1,200),
    and `scnet-eval --data demo` (or data/demo, as the README writes it) evaluates the same set."""
    monkeypatch.chdir(tmp_path)
    folder = make_demo(tmp_path / "data/demo", num_classes=10, train_per_class=2, val_per_class=1, progress=False)
    victim = sorted((folder / "val").rglob("*.JPEG"))[3]
    original = victim.read_bytes()
    victim.unlink()  # as if an earlier drawing had been interrupted
    assert train_main(["--config", str(QUICKSTART), *_overrides("demo", Path("runs/demo"))]) == 0
    err = capsys.readouterr().err
    assert err.count(f"data.root=demo: the built-in demo set, at {tmp_path / 'data' / 'demo'}\n") == 1
    assert victim.read_bytes() == original
    assert len(list((folder / "train").rglob("*.JPEG"))) == 20 and len(list((folder / "val").rglob("*.JPEG"))) == 10
    trained = _metrics(tmp_path / "runs/demo")
    by_name = _eval(capsys, tmp_path, "--checkpoint", "runs/demo/best.pth", "--data", "demo")
    by_path = _eval(capsys, tmp_path, "--checkpoint", "runs/demo/best.pth", "--data", "data/demo")
    assert (by_name["images"], by_name["top1"]) == (by_path["images"], by_path["top1"]) == (10, trained["top1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "eval0.json", "eval1.json", "runs"]


# --------------------------------------------------------------------------------------------------
# 2. A warm-up as long as the run


def _lr_of_each_step(peak: float, warmup_lr: float, steps: int) -> list[float]:
    """The lr each optimizer step uses under timm's cosine schedule with 1 warm-up epoch of ``steps`` steps,
    stepped as the trainer steps it (step_update after each step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=1,
        warmup_epochs=1,
        warmup_lr=warmup_lr,
        step_on_epochs=False,
        updates_per_epoch=steps,
    )
    used = []
    for step in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(num_updates=step + 1)
    return used


def test_warmup_as_long_as_the_run_warns_once(demo, tmp_path, capsys):
    assert train_main(["--config", str(QUICKSTART), *_overrides(demo, tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("scnet-train: warning:")]
    assert len(warnings) == 1, err
    peak = load_config(QUICKSTART, _overrides(demo, tmp_path / "run")).peak_lr  # the quickstart's lr, at batch 4
    used = _lr_of_each_step(peak, warmup_lr=1e-5, steps=5)
    assert max(used) < peak  # timm itself: the peak is never reached
    assert warnings[0].startswith("scnet-train: warning: schedule.warmup_epochs=1 >= train.epochs=1: ")
    assert f"from 1e-05 to {used[-1]:.3g} at the last step, below the peak {peak:.3g}" in warnings[0]
    assert "cosine decay never starts" in warnings[0]
    assert _metrics(tmp_path / "run")["epoch"] == 1


# --------------------------------------------------------------------------------------------------
# 3 and 4. A val split labelled by the training classes, its bad files skipped; training still replaces


@pytest.fixture(scope="module")
def partial(demo, module_tmp) -> dict[str, Path]:
    """10 train classes, a val split without the first (00_circle), no classes.txt; 05_ring has 3 val images.

    One val file (07_vstripes) and one train file (03_star) are unreadable. A crafted classifier predicts class
    5 for every image: with the val split labelled by the training classes, its top-1 is 3 of the 10 readable
    images; a val split indexed on its own would call 06_hstripes class 5 (1 of 10).
    """
    tmp = module_tmp
    root = tmp / "data"
    shutil.copytree(demo, root, ignore=shutil.ignore_patterns("classes.txt", "demo.json"))
    shutil.rmtree(root / "val" / "00_circle")
    for i, image in enumerate(sorted((root / "train" / "05_ring").iterdir())):
        shutil.copy(image, root / "val" / "05_ring" / f"extra_{i}.JPEG")
    bad_val = next((root / "val" / "07_vstripes").iterdir())
    bad_val.write_bytes(os.urandom(4000))
    bad_train = sorted((root / "train" / "03_star").iterdir())[0]
    bad_train.write_bytes(bad_train.read_bytes()[:300])
    crafted = tmp / "crafted.pth"
    torch.save(crafted_state_dict(FAVOURED, num_classes=10), crafted)
    return {"root": root, "bad_val": bad_val, "bad_train": bad_train, "crafted": crafted}


def _partial_overrides(partial: dict[str, Path], out: Path, *extra: str) -> list[str]:
    # A vanishing lr keeps the crafted head (zero weights, bias peaked at class 5) as it is.
    return _overrides(partial["root"], out, f"model.pretrained={partial['crafted']}", "optim.lr=1e-12", *extra)


@pytest.mark.slow
def test_val_split_labelled_by_training_classes_and_bad_files_skipped(partial, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--config", str(QUICKSTART), *_partial_overrides(partial, out)]) == 0
    err = capsys.readouterr().err
    metrics = _metrics(out)
    assert (metrics["top1"], metrics["val_images"], metrics["val_skipped"]) == (pytest.approx(30.0), 10, 1)
    assert metrics["replaced"] == 1  # training still replaces its bad file (every sample is read once)
    assert f"validation: 1 unreadable file(s) skipped, not counted: {partial['bad_val']}" in err
    assert f"1 bad samples replaced (1 files): {partial['bad_train']}" in err
    state = torch.load(out / "best.pth", weights_only=True)
    assert state["classes"] == sorted(p.name for p in (partial["root"] / "train").iterdir())

    # scnet-eval labels the split the same way from the checkpoint's list, with no classes.txt ...
    from_checkpoint = _eval(capsys, tmp_path, "--checkpoint", out / "best.pth", "--data", partial["root"])
    # ... as the release's bare state_dict does with a hand-written one.
    data = tmp_path / "data"
    shutil.copytree(partial["root"], data)
    (data / "classes.txt").write_text("".join(f"{name}\n" for name in state["classes"]))
    torch.save(state["model"], tmp_path / "bare.pth")
    bare = ["--model", "scnet50", "--image-size", 112, "--crop-pct", 0.875]
    from_file = _eval(capsys, tmp_path, "--checkpoint", tmp_path / "bare.pth", "--data", data, *bare)
    for result in (from_checkpoint, from_file):
        assert (result["top1"], result["images"], len(result["skipped"])) == (metrics["top1"], 10, 1)
    assert from_checkpoint["skipped"] == [str(partial["bad_val"])]


@pytest.mark.slow
def test_torchrun_two_processes_label_count_and_warn_as_one(partial, tmp_path):
    out = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd = [*torchrun, "-m", "scnet.cli.train", "--config", str(QUICKSTART), *_partial_overrides(partial, out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("scnet-train: warning: schedule.warmup_epochs=1 >= train.epochs=1") == 1  # rank 0
    metrics = _metrics(out)
    # The 10 readable val images split over two ranks, each counted once; the bad one named by whichever read it.
    assert (metrics["top1"], metrics["val_images"], metrics["val_skipped"]) == (pytest.approx(30.0), 10, 1)
    assert proc.stderr.count(f"validation: 1 unreadable file(s) skipped, not counted: {partial['bad_val']}") == 1


def test_val_class_unknown_to_training_is_one_line(partial, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(partial["root"], root)
    (root / "val" / "zz_unknown").mkdir()
    shutil.copy(next((root / "val" / "05_ring").iterdir()), root / "val" / "zz_unknown" / "x.JPEG")
    out = tmp_path / "run"
    assert train_main(["--config", str(QUICKSTART), *_overrides(root, out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"scnet-train: error: {root / 'val' / 'zz_unknown'}: class folder 'zz_unknown' is not in ")
    assert f"the classes of the training split {root / 'train'}" in err
    assert not out.exists()


def test_strict_stops_at_a_bad_val_file(partial, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(partial["root"], root)
    bad_train = root / partial["bad_train"].relative_to(partial["root"])
    shutil.copy(next(p for p in bad_train.parent.iterdir() if p != bad_train), bad_train)  # training reads fine
    assert train_main(["--config", str(QUICKSTART), *_overrides(root, tmp_path / "run", "data.strict=true")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    bad_val = root / partial["bad_val"].relative_to(partial["root"])
    assert err.startswith(f"scnet-train: error: {bad_val}: cannot decode image")
