"""``scnet-zoo``'s output (its entry point; the installed console script once, as a real process), its numbers
checked against independent counts and the publications."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from scnet.cli.zoo import main as zoo_main

from ..utils import EXPECTED_BASELINES

MODULE = [sys.executable, "-m", "scnet.cli.zoo"]
ROWS = ["scnet50", "resnet50", "sc_resnext50_32x4d"]


def zoo_output(*args: str) -> str:
    """What ``scnet-zoo ARGS`` prints, from its entry point in this process (a process start costs ~5 s)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert zoo_main(list(args)) == 0
    return out.getvalue()


def params_m(name: str) -> float:
    """Params in millions, counted here from timm's model (meta device: shapes only)."""
    with torch.device("meta"):
        model = timm.create_model(name)
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 2)


@pytest.fixture(scope="module")
def json_rows() -> list[dict]:
    return json.loads(zoo_output("--format", "json", "--models", *ROWS))


def test_json_rows(json_rows):
    assert [r["model"] for r in json_rows] == ROWS
    rows = {r["model"]: r for r in json_rows}
    for name in ROWS:
        assert rows[name]["params_m"] == params_m(name), name
    assert rows["scnet50"]["baseline"] == EXPECTED_BASELINES["scnet50"]
    assert rows["sc_resnext50_32x4d"]["top1"] is None  # never released
    assert rows["sc_resnext50_32x4d"]["checkpoint"] is None
    # ResNet-50's 4.1 GMACs, as the ResNeXt authors' README gives it (one decimal).
    assert abs(rows["resnet50"]["gmacs"] - 4.1) <= 0.05


def test_json_published_numbers(json_rows, published):
    row = json_rows[ROWS.index("scnet50")]
    assert row["gmacs"] == pytest.approx(published["scnet50"]["gmacs"], rel=0.01)
    assert row["top1"] == published["scnet50"]["top1"]
    assert row["checkpoint"] == published["scnet50"]["checkpoint"]


@pytest.mark.slow
def test_csv_full_table(json_rows):
    # The default model list; a small image keeps the MAC counting of 16 models cheap.
    lines = zoo_output("--format", "csv", "--image-size", "112").splitlines()
    rows = list(csv.DictReader(io.StringIO("\n".join(lines))))
    assert lines[0].split(",") == list(json_rows[0])  # same columns as the JSON, as a header
    assert len(lines) == 1 + len(rows)
    assert [r["model"] for r in rows] == list(EXPECTED_BASELINES) + list(dict.fromkeys(EXPECTED_BASELINES.values()))
    by_name = {r["model"]: r for r in rows}
    for row in json_rows:
        assert float(by_name[row["model"]]["params_m"]) == row["params_m"]
        assert by_name[row["model"]]["checkpoint"] == (row["checkpoint"] or "")


def test_markdown_table(json_rows):
    names = ["scnet50", "sc_resnext50_32x4d"]
    lines = zoo_output("--format", "markdown", "--models", *names, "--image-size", "112").strip().splitlines()
    assert len(lines) == 2 + len(names)  # header, separator, one row per model
    assert all(line.startswith("|") and line.endswith("|") for line in lines)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert len({len(c) for c in cells}) == 1, "ragged table"
    assert all(re.fullmatch(r":?-{3,}:?", c) for c in cells[1])
    assert [c[0] for c in cells[2:]] == names
    # Same published metadata as the JSON output.
    scnet50 = json_rows[ROWS.index("scnet50")]
    assert f"{scnet50['top1']:.2f}" in cells[2]
    assert scnet50["checkpoint"] in cells[2]


def test_unknown_model_is_a_one_line_error():
    # Through the installed console script when there is one, so the entry point is exercised too.
    script = Path(sys.executable).with_name("scnet-zoo")
    command = [str(script)] if script.is_file() else MODULE
    proc = subprocess.run([*command, "--models", "scnet5O"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "scnet5O" in err[0] and "scnet50" in err[0].replace("scnet5O", "")
