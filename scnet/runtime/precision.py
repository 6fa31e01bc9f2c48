"""Mixed precision by its config name: one mapping and one autocast for training, evaluation and benchmarks, and
the choice that ``train.amp: auto`` makes for a device."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

# train.amp / --amp: "none" runs float32.
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, amp: str | torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``amp`` (a name of :data:`AMP_DTYPES` or a dtype); disabled for none/float32."""
    dtype = AMP_DTYPES[amp] if isinstance(amp, str) else amp
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU that supports it, or a CPU with AVX-512 BF16 or
    AMX. Elsewhere bf16 autocast is emulated: on an AVX2-only CPU a training step of SCNet-50 ran 12x slower
    than in float32 (oneDNN limited to AVX2 on the dev VM), on AVX-512 without BF16 2x slower."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, absent in older torch
        return any(getattr(cpu, name, lambda: False)() for name in checks)
    return False


def resolve_amp(amp: str, device: torch.device) -> str:
    """``amp`` itself, or for ``"auto"``: ``"bf16"`` where ``device`` computes it natively (:func:`native_bf16`),
    else ``"none"``."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "none"
