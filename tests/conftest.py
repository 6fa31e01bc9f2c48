"""Shared fixtures: the published reference numbers, a checkpoint in the original release's format, the tiny
demo set and the uninterrupted training run that the resume and fault tests compare against."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import scnet
from scnet.data.demo import make_demo

from .reliability.harness import run_here, train_command
from .utils import REFERENCE_DIR, REFERENCE_FILES, RELEASED, randomize_

# With any other load on the CPU (a benchmark, a second pytest worker), OpenMP's spinning barriers make
# multi-threaded convs of these small tensors 10-50x slower; one thread is predictable, in this process and
# in every process a test starts (they inherit the variable). An OMP_NUM_THREADS set by the caller wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", help="also run the long trials (tests marked long: random kills, soak)"
    )
    parser.addoption("--kill-seed", type=int, default=0, help="seed of the random kill trials (--long)")
    parser.addoption("--reliability-report", default=None, help="append the long trials' results (JSON lines) here")


# The modules that take longest on the 2-core CI (40-230 s each, measured), longest first. Under pytest-xdist
# (--dist loadfile --no-loadscope-reorder) whole modules go to the two workers in collection order: one of
# these started last would keep one worker busy minutes after the other ran out of work. Only the order
# changes; the other modules follow in their usual order.
LONGEST_MODULES = (
    "models/test_contracts.py",
    "scripts/test_bench_gpu.py",
    "reliability/test_peers.py",
    "reliability/test_kills.py",
    "tables/test_run.py",
    "models/test_ablation_options.py",
    "reliability/test_disk_full.py",
    "reliability/test_modern_recipe.py",
    "train/test_train_data.py",
    "cli/test_export.py",
    "reliability/test_shard_resume.py",
    "train/test_train.py",
    "train/test_damaged_checkpoint.py",
    "cli/test_eval.py",
)


def _start_rank(item: pytest.Item) -> int:
    module = item.nodeid.split("::", 1)[0].removeprefix("tests/")
    return LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_start_rank)  # stable: each module's tests keep their order
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="a long trial: run with --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory) -> Iterator[Path]:
    """A folder for the files a test module shares (checkpoints, data), removed when the module's tests end.

    A training checkpoint of SCNet-50 is 100-300 MB; kept until the session ends (what pytest does with
    tmp_path_factory), one run of the suite held 11 GB and filled a CI machine's disk.
    """
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Iterator[Path]:
    """The tiny demo set of the training tests: 10 classes, 2 train / 1 val image each (never modified)."""
    path = tmp_path_factory.mktemp("demo")
    yield make_demo(path, num_classes=10, train_per_class=2, val_per_class=1, progress=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def reference_run(demo, tmp_path_factory) -> Iterator[Path]:
    """One uninterrupted, deterministic 2-epoch run on ``demo``, the command of
    ``tests.reliability.harness.train_command`` (run in this process): 5 steps an epoch, checkpoints every 2
    steps. Every test that resumes, kills or damages a run of those settings must end with its weights,
    best.pth and metrics; tests only read it. Loader workers and checkpoint cadence do not change the
    weights, so a test may run with other values of those."""
    path = tmp_path_factory.mktemp("reference")
    out = path / "run"
    assert run_here(train_command(demo, out)) == 0
    yield out
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The committed copies of the published reference files (tests/reference)."""
    # Part of the repository: missing means a broken checkout, which must fail rather than skip.
    missing = [name for name in REFERENCE_FILES if not (REFERENCE_DIR / name).is_file()]
    if missing:
        pytest.fail(f"reference files missing from {REFERENCE_DIR}: {', '.join(missing)}")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def layout(reference_dir: Path) -> dict:
    """``{name: {"params": int, "state_dict": [[tensor name, shape], ...]}}`` of the published checkpoints."""
    return json.loads((reference_dir / "official_checkpoint_layout.json").read_text())["models"]


def _model_name(paper_name: str) -> str:
    return paper_name.lower().replace("-", "")  # "SCNet-50_v1d" -> "scnet50_v1d"


@pytest.fixture(scope="session")
def published(reference_dir: Path) -> dict[str, dict]:
    """Per released name: exact params, GMACs at 224 px, published top-1 and checkpoint file (if any).

    Parsed from published_results.md so that the numbers come from the authors' side, not from scnet.
    """
    text = (reference_dir / "published_results.md").read_text()
    rows: dict[str, dict] = {}
    # "SCNet-50 25,564,584 params / 3.93 GMACs; SCNet-50_v1d 25,583,816 / 4.69; ..."
    for name, params, gmacs in re.findall(r"(SCNet-\d+(?:_v1d)?) ([\d,]{9,})(?: params)? / (\d+\.\d+)", text):
        rows[_model_name(name)] = {
            "params": int(params.replace(",", "")),
            "gmacs": float(gmacs),
            "top1": None,
            "checkpoint": None,
        }
    # "| SCNet-50 | 25.56M | 4.0G | 22.19 | 6.08 | 77.81 | scnet50-dc6a7e87.pth |"
    for name, top1, file in re.findall(r"^\| (SCNet-\S+) \|.*\| (\d+\.\d+) \| (\S+\.pth) \|$", text, re.MULTILINE):
        rows[_model_name(name)].update(top1=float(top1), checkpoint=file)
    # A reworded reference must fail here, loudly, not make the tests that use it vacuous.
    assert set(rows) == set(RELEASED), f"could not parse published_results.md: {rows}"
    assert sum(r["checkpoint"] is not None for r in rows.values()) == 3, rows
    return rows


@pytest.fixture(scope="session")
def scnet50_state_dict() -> dict[str, torch.Tensor]:
    """A scnet50 state_dict with random weights and BN statistics (unlike a fresh model's ones and zeros)."""
    torch.manual_seed(0)
    return dict(randomize_(scnet.create_model("scnet50"), seed=1).state_dict())


@pytest.fixture(scope="session")
def scnet50_file(tmp_path_factory, scnet50_state_dict) -> Path:
    """The state_dict saved the way the release published its weights: a bare dict, under the release's name."""
    path = tmp_path_factory.mktemp("published") / "scnet50-dc6a7e87.pth"
    torch.save(scnet50_state_dict, path)
    return path
