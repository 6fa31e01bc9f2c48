"""The SCNet model zoo."""

from ..layers.functional import InputTooSmallError
from ..layers.scconv import SCConv
from .complexity import count_macs, count_params
from .detection import detection_backbone
from .download import DownloadError
from .factory import BASELINE_MODELS, create_model, list_models
from .freeze import EvalBatchNorm2d, freezable, freeze
from .network import SCNet
from .weights import CheckpointError, load_weights, read_state_dict
from .zoo import BASELINES, PUBLISHED, SC_MODELS, PublishedWeights, published_weights, released_weights

__all__ = [
    "BASELINES",
    "BASELINE_MODELS",
    "CheckpointError",
    "EvalBatchNorm2d",
    "DownloadError",
    "InputTooSmallError",
    "PUBLISHED",
    "PublishedWeights",
    "SCConv",
    "SCNet",
    "SC_MODELS",
    "count_macs",
    "count_params",
    "create_model",
    "detection_backbone",
    "freezable",
    "freeze",
    "list_models",
    "load_weights",
    "published_weights",
    "read_state_dict",
    "released_weights",
]
