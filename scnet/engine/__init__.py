"""Running models over data: evaluation (and, beside it, training)."""

from .evaluate import IndexedDataset, build_eval_loader, evaluate

__all__ = ["IndexedDataset", "build_eval_loader", "evaluate"]
