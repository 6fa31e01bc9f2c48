"""data.decode=gpu (its code on a CPU device, torchvision's CPU decoder standing in for nvjpeg) trains exactly as
data.decode=cpu, and a run killed mid-epoch resumes exactly: the crops the workers drew are drawn again."""

from __future__ import annotations

import json

import pytest

from .harness import KILLED, assert_same_weights, leftovers, run, stable_metrics, train_command, weights


@pytest.mark.slow
def test_device_decoding_killed_mid_epoch_ends_with_the_cpu_paths_weights(demo, reference_run, tmp_path):
    out = tmp_path / "run"
    command = train_command(demo, out, "data.decode=gpu")
    result = run(command, fault="step:3")  # step 3's backward done; resumes from the checkpoint of step 2
    assert result.returncode == KILLED, f"step:3 did not fire: {result.stderr[-2000:]}"
    assert "data.decode=gpu on cpu: the device-decoding path with the CPU decoder standing in" in result.stderr
    result = run(command)
    assert result.returncode == 0, result.stderr[-3000:]
    # The uninterrupted reference decoded in its loader workers (data.decode=cpu): the same pixels, the same run.
    assert_same_weights(weights(reference_run), weights(out))
    assert_same_weights(weights(reference_run / "best.pth"), weights(out / "best.pth"))
    assert stable_metrics(out) == stable_metrics(reference_run)
    counts = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["decoded_on_cpu"], m["left_out"]) for m in counts] == [(0, 0), (0, 0)]  # the demo: baseline JPEGs
    assert leftovers(out) == []
