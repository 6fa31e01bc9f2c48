"""Running models over data: evaluation (and, beside it, training), and the one path from a checkpoint file
to a ready model and its accuracy (:mod:`.inference`)."""

from .evaluate import IndexedDataset, build_eval_loader, evaluate
from .inference import Evaluation, LoadedCheckpoint, evaluate_checkpoint, load_checkpoint, prepare_evaluation

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
