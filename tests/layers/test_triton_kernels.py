"""The fused Triton training kernels without a GPU: their cases (``triton_cases.py``) run under Triton's
interpreter in a subprocess, since ``TRITON_INTERPRET=1`` must be set before the kernels are defined; and the
dispatch that keeps them off CPU tensors otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import scnet
from scnet.layers.dispatch import HAS_TRITON, training_kernels

from ..utils import REPO_ROOT

CASES = Path(__file__).with_name("triton_cases.py")
KERNEL_MODULES = [REPO_ROOT / "scnet" / "layers" / f"triton_{name}.py" for name in ("bn", "calibration")]


@pytest.mark.slow
def test_kernels_match_the_plain_layers_under_the_interpreter():
    """Every case of triton_cases.py passes with the kernels run by Triton's interpreter on CPU tensors."""
    assert HAS_TRITON, "triton is not installed (it comes with torch's Linux wheels)"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{proc.stdout[-8000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_kernels_reduce_without_atomics():
    """train.deterministic's promise on CUDA: every reduction writes per-program partial results that are
    combined in a fixed order; a float atomic would make the sum's order, and its bits, vary from run to run."""
    for path in KERNEL_MODULES:
        assert "tl.atomic_" not in path.read_text(), f"{path.name} uses an atomic"


def test_cpu_training_takes_the_lean_kernels():
    """Without the interpreter, CPU tensors never reach the Triton kernels: lean kernels in training (also with
    triton off), plain layers in evaluation, without autograd, with set_fused(False) or a custom norm."""
    bn = nn.BatchNorm2d(4).train()
    x = torch.zeros(1, 4, 8, 8)
    assert training_kernels(x, True, True, [bn]) == "lean"
    assert training_kernels(x, True, False, [bn]) == "lean"
    assert training_kernels(x, False, True, [bn]) == "plain"
    with torch.no_grad():
        assert training_kernels(x, True, True, [bn]) == "plain"
    assert training_kernels(x, True, True, [nn.SyncBatchNorm(4)]) == "plain"
    assert training_kernels(x, True, True, [bn.eval()]) == "plain"


def test_set_fused_sets_both_flags_on_every_sc_module():
    model = scnet.create_model("scnet50")
    model.set_fused(True, triton=False)
    flags = {(m.fused, m.triton) for m in model.modules() if hasattr(m, "triton")}
    assert flags == {(True, False)}
    model.set_fused()
    assert {(m.fused, m.triton) for m in model.modules() if hasattr(m, "triton")} == {(True, True)}
