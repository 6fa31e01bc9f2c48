"""train.amp: auto takes bf16 only where the device computes it natively (emulated bf16 is far slower than fp32)."""

from __future__ import annotations

import pytest
import torch

from scnet.runtime.precision import native_bf16, resolve_amp

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "none")]
)
def test_auto_is_bf16_only_on_a_cpu_that_has_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert native_bf16(CPU) == (expected == "bf16")
    assert resolve_amp("auto", CPU) == expected
    for named in ("none", "bf16", "fp16"):  # a named precision is never changed
        assert resolve_amp(named, CPU) == named


def test_auto_without_the_private_checks_is_none(monkeypatch):
    # Older torch has neither private check: no claim of native bf16, so fp32.
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert resolve_amp("auto", CPU) == "none"
