"""The SC operator's plain functions and options: checks, the context's resize, the option names.

Imported by every other module of ``scnet.layers`` and by the networks; it imports nothing of scnet.
"""

# No `from __future__ import annotations`: these functions run inside SCConv's forward, whose FX-generated
# code TorchScript must be able to read (see scconv.py).
import torch
import torch.nn.functional as F

# SCConv's calibration options, by their create_model / config names (ModelConfig holds the release's values).
SC_OPTION_KEYS: tuple[str, ...] = ("pooling_r", "pool_type", "pool_ceil_mode", "calib_identity", "upsample")
POOL_TYPES = ("avg", "max")
UPSAMPLE_MODES = ("nearest", "bilinear")


class InputTooSmallError(ValueError):
    """Raised when an input is too small for SCConv's r x r pooling (the last stage's map holds no window)."""


def check_calibration_options(
    pooling_r: int, pool_type: str, pool_ceil_mode: bool, calib_identity: bool, upsample: str
) -> None:
    """Raise ``ValueError`` naming the option and its allowed values if any SCConv option is invalid."""
    # bool is an int subclass: pooling_r=True would silently mean r=1.
    if not isinstance(pooling_r, int) or isinstance(pooling_r, bool) or pooling_r < 1:
        raise ValueError(f"pooling_r must be an integer >= 1, got {pooling_r!r}")
    if pool_type not in POOL_TYPES:
        raise ValueError(f"pool_type must be one of {', '.join(map(repr, POOL_TYPES))}, got {pool_type!r}")
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample must be one of {', '.join(map(repr, UPSAMPLE_MODES))}, got {upsample!r}")
    # A string such as "false" would be truthy: only real booleans.
    for key, value in (("pool_ceil_mode", pool_ceil_mode), ("calib_identity", calib_identity)):
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be True or False, got {value!r}")


def min_feature_size(pooling_r: int, pool_ceil_mode: bool) -> int:
    """The smallest map SCConv's pool accepts: one whole ``r x r`` window when it floors, 1 px when it ceils
    (a map smaller than ``r`` is then one partial window)."""
    return 1 if pool_ceil_mode else pooling_r


def check_feature_size(x: torch.Tensor, pooling_r: int, min_size: int, min_input_size: int) -> torch.Tensor:
    """Return ``x`` unchanged, or raise :class:`InputTooSmallError` if it is below ``min_size`` (see
    :func:`min_feature_size`) in height or width.

    ``min_input_size`` (0 = unknown) is the network input size that would have been enough; it only
    makes the message useful. Returning ``x`` keeps the check in FX graphs (dead-code elimination
    removes calls whose result nobody uses).
    """
    h, w = x.shape[-2], x.shape[-1]
    if h < min_size or w < min_size:
        hint = f" (network inputs of at least {min_input_size} px)" if min_input_size > 0 else ""
        raise InputTooSmallError(
            f"SCConv's r={pooling_r} pooling needs a feature map of at least {min_size}x{min_size}{hint}, got {h}x{w}"
        )
    return x


def upsample_like(y: torch.Tensor, x: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """``y`` resized to the spatial size of ``x``: ``nearest`` as the release does it, or ``bilinear``
    (``align_corners=False``, PyTorch's default) as the paper's text says."""
    if mode == "nearest":
        return F.interpolate(y, size=x.shape[-2:], mode="nearest")
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
