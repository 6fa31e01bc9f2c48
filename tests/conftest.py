"""Shared fixtures: the published reference numbers, a checkpoint in the original release's format, the tiny
demo set and the uninterrupted training run that the resume and fault tests compare against."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
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
    "layers/test_triton_kernels.py",
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


# Under pytest-xdist the workers are separate processes, each with its own session: a session fixture that
# trains would train once per worker. The fixtures below are made once per test run instead, by whichever
# worker asks first (the others wait on a lock), in a folder of the run's shared base directory that the
# controller removes when the run ends (pytest_sessionfinish). Without xdist they are ordinary session fixtures.
SHARED = "shared-by-workers"


def _made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """``make(path)`` run once per test run for an empty folder ``path``, which is returned (read-only after)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        path = tmp_path_factory.mktemp(name)
        make(path)
        return path
    root = tmp_path_factory.getbasetemp().parent / SHARED  # the controller's base directory
    root.mkdir(exist_ok=True)
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a worker dies
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # what a worker that died while making it left
            path.mkdir()
            make(path)
            done.touch()
    return path


def pytest_sessionfinish(session: pytest.Session) -> None:
    # The controller (or a run without xdist: nothing to remove) clears what the workers shared.
    factory = getattr(session.config, "_tmp_path_factory", None)
    if "PYTEST_XDIST_WORKER" not in os.environ and factory is not None:
        shutil.rmtree(factory.getbasetemp() / SHARED, ignore_errors=True)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Iterator[Path]:
    """The tiny demo set of the training tests: 10 classes, 2 train / 1 val image each (never modified)."""

    def make(path: Path) -> None:
        make_demo(path / "demo", num_classes=10, train_per_class=2, val_per_class=1, progress=False)

    path = _made_once(tmp_path_factory, "demo", make)
    yield path / "demo"
    if "PYTEST_XDIST_WORKER" not in os.environ:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def reference_run(demo, tmp_path_factory) -> Iterator[Path]:
    """One uninterrupted, deterministic 2-epoch run on ``demo``, the command of
    ``tests.reliability.harness.train_command`` (run in this process): 5 steps an epoch, checkpoints every 2
    steps. Every test that resumes, kills or damages a run of those settings must end with its weights,
    best.pth and metrics; tests only read it. Loader workers and checkpoint cadence do not change the
    weights, so a test may run with other values of those."""

    def make(path: Path) -> None:
        assert run_here(train_command(demo, path / "run")) == 0

    path = _made_once(tmp_path_factory, "reference", make)
    yield path / "run"
    if "PYTEST_XDIST_WORKER" not in os.environ:
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
