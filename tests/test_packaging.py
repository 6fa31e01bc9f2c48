"""What a user installs and cites: the distribution's own name on the package index in every install line, the
LICENSE, CITATION.cff, CONTRIBUTING.md, and a wheel that ships py.typed, the license and the package data."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import scnet

from .utils import REPO_ROOT

DISTRIBUTION = "scnet-pytorch"  # "scnet" on the package index is an unrelated project
CLI = ("zoo", "data", "bench", "train", "eval", "table", "predict", "export", "cam")
# CHANGELOG.md keeps the history as it was (the old name included).
NOT_SCANNED = {"CHANGELOG.md"}
INSTALL = re.compile(r"pip install\s+(?:-e\s+)?['\"]?([A-Za-z0-9_.\-]+)\[([A-Za-z0-9_,\-]+)\]")
OLD_NAME = re.compile(r"(?<![\w.\-/])" + "scnet" + r"\[")  # the package index's other project, with an extra


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _scanned_files() -> list[Path]:
    """The repository's text files that a user reads or runs (docs/ included), but CHANGELOG.md."""
    suffixes = {".py", ".sh", ".sbatch", ".toml", ".yaml", ".yml", ".md", ".cff", ".txt", ".cfg"}
    files = [REPO_ROOT / ".ci" / "run"]
    for path in sorted(REPO_ROOT.iterdir()):
        if path.name in NOT_SCANNED or path.name.startswith(".") or path.name in ("build", "dist"):
            continue
        if path.is_file() and path.suffix in suffixes:
            files.append(path)
        elif path.is_dir() and path.name in ("scnet", "scripts", "tests", "configs", "docs"):
            files += [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in suffixes]
    return [f for f in files if f.exists() and "__pycache__" not in f.parts]


def test_the_distribution_has_a_name_of_its_own_and_the_import_name_stays():
    project = _pyproject()
    assert project["project"]["name"] == DISTRIBUTION
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["scnet*"]
    assert set(project["project"]["scripts"]) == {f"scnet-{c}" for c in CLI}


def test_every_install_line_names_the_distribution_and_a_real_extra():
    extras = set(_pyproject()["project"]["optional-dependencies"])
    found, wrong = 0, []
    for path in _scanned_files():
        text = path.read_text(errors="replace")
        where = path.relative_to(REPO_ROOT)
        for m in INSTALL.finditer(text):
            found += 1
            name, wanted = m.group(1), set(m.group(2).split(","))
            if name not in (DISTRIBUTION, ".") or not wanted <= extras:
                wrong.append(f"{where}: {m.group(0)}")
        wrong += [f"{where}: {text[m.start() : m.end() + 12]!r}" for m in OLD_NAME.finditer(text)]
    assert found >= 5, "the scan found too few install lines: is it looking in the right places?"
    assert not wrong, f"install lines not naming {DISTRIBUTION} (or an unknown extra):\n" + "\n".join(wrong)


def test_the_scan_catches_the_old_name():
    old = "scnet"  # spelled apart, so that this file passes its own scan
    assert INSTALL.search(f"needs scipy: pip install '{old}[imagenet]'").group(1) == old
    assert OLD_NAME.search(f"matplotlib (`{old}[plot]`)")
    assert not OLD_NAME.search(f"pip install '{DISTRIBUTION}[plot]'")


def test_license_is_mit_as_pyproject_says():
    text = (REPO_ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the scnet authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]


def test_citation_cites_the_software_and_prefers_the_paper():
    cff = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["message"]
    assert str(cff["version"]) == scnet.__version__ and cff["license"] == "MIT"
    assert cff["title"] and cff["authors"]
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper"
    assert paper["title"] == "Improving Convolutional Networks with Self-Calibrated Convolutions"
    names = [f"{a['given-names']} {a['family-names']}" for a in paper["authors"]]
    assert names == ["Jiang-Jiang Liu", "Qibin Hou", "Ming-Ming Cheng", "Changhu Wang", "Jiashi Feng"]
    assert paper["year"] == 2020 and "CVPR" in paper["collection-title"]
    assert (paper["start"], paper["end"]) == (10096, 10105)


def test_contributing_gives_the_suites_and_names_real_files():
    text = (REPO_ROOT / "CONTRIBUTING.md").read_text()
    assert 'python -m pytest -q -n 2 -m "not slow"' in text
    full = "python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder"
    assert full in text and full in (REPO_ROOT / ".ci" / "run").read_text()  # the suite CI runs
    assert "ruff check . && ruff format --check ." in text and "## Layout" in text
    paths = set(re.findall(r"`((?:scnet|tests|configs|scripts)/[\w/.]+?\.(?:py|yaml))`", text))
    assert {"scnet/models/zoo.py", "scnet/models/published.yaml", "scnet/tables/release.yaml"} <= paths
    example = {"configs/imagenet/scnet152.yaml"}  # the page's worked example of a new model
    assert [p for p in sorted(paths - example) if not (REPO_ROOT / p).exists()] == []


def test_the_package_says_it_is_typed():
    assert (REPO_ROOT / "scnet" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["scnet"]


def test_the_wheel_ships_py_typed_the_license_and_the_package_data(tmp_path):
    """The wheel built from a copy of the sources (no build folder in the checkout), without build isolation:
    nothing is downloaded (the dev extra installs the build backend)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "scnet", src / "scnet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", "./src"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"scnet_pytorch-{scnet.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"scnet_pytorch-{scnet.__version__}.dist-info"
        metadata = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert {"scnet/py.typed", "scnet/__init__.py", "scnet/cli/_common.py", f"{info}/licenses/LICENSE"} <= names
    assert {"scnet/tables/release.yaml", "scnet/models/published.yaml"} <= names
    assert f"Name: {DISTRIBUTION}\n" in metadata and "License-Expression: MIT\n" in metadata
    for cli in CLI:
        assert f"scnet-{cli} = scnet.cli.{cli}:main" in entry_points
