"""scnet: Self-Calibrated Convolution networks (SCNet, CVPR 2020) for PyTorch and timm.

Importing the package registers every SC model in timm's registry.
"""

__version__ = "0.1.0"

from .models import (  # noqa: E402
    CheckpointError,
    InputTooSmallError,
    count_macs,
    count_params,
    create_model,
    list_models,
    load_weights,
)

__all__ = [
    "CheckpointError",
    "InputTooSmallError",
    "__version__",
    "count_macs",
    "count_params",
    "create_model",
    "list_models",
    "load_weights",
]
