"""Mixed precision by its config name: one mapping and one autocast for training, evaluation and benchmarks."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

# train.amp / --amp: "none" runs float32.
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, amp: str | torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for ``amp`` (a name of :data:`AMP_DTYPES` or a dtype); disabled for none/float32."""
    dtype = AMP_DTYPES[amp] if isinstance(amp, str) else amp
    return torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None)
