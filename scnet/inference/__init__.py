"""A checkpoint file put to use: the one path from a file to a ready model (:mod:`.checkpoint`), its exact
accuracy on a split (:mod:`.accuracy`), predictions for images (:mod:`.predict`), export to other formats
(:mod:`.export`) and Grad-CAM maps (:mod:`.cam`)."""

from ..data.loader import IndexedDataset, build_eval_loader
from .accuracy import Evaluation, evaluate, evaluate_checkpoint, prepare_evaluation
from .checkpoint import LoadedCheckpoint, load_checkpoint

__all__ = [
    "Evaluation",
    "IndexedDataset",
    "LoadedCheckpoint",
    "build_eval_loader",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "prepare_evaluation",
]
