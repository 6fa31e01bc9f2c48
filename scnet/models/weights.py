"""Reading checkpoints into models, without ever unpickling arbitrary objects."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from timm.models import load_state_dict as timm_load_state_dict
from torch import nn

from ..runtime.distributed import is_main_process
from ..runtime.messages import first_line


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def read_state_dict(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``path``.

    Accepts a bare state_dict (the original release's ``.pth`` files), a ``.safetensors`` file, or
    a training checkpoint holding one under ``model``/``state_dict`` (``model_ema``/``state_dict_ema``
    with ``use_ema``). ``module.`` prefixes from DDP are removed. Pickled files are read with
    ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        # timm's reader: safetensors or torch.load(weights_only=True), unwraps and strips 'module.'.
        state_dict = timm_load_state_dict(str(path), use_ema=use_ema)
    except Exception as e:  # noqa: BLE001 - any read failure becomes one clear line
        raise unreadable(path, e) from e
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: not a state_dict (a {type(state_dict).__name__})")
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: not a state_dict (entry {key!r} is a {type(value).__name__})")
    return state_dict


def unreadable(path: str | os.PathLike, e: BaseException) -> CheckpointError:
    """The one line for a checkpoint file that cannot be read (truncated, empty, random or unsafe bytes)."""
    return CheckpointError(f"{path}: cannot read checkpoint ({first_line(e)})")


def check_compatible(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, ignore_prefix: str = ""
) -> None:
    """Raise :class:`CheckpointError` (one line) unless ``state_dict`` has exactly ``model``'s tensors.

    Keys starting with ``ignore_prefix`` (e.g. the classifier when its size changes) are skipped.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items()}
    if ignore_prefix:
        expected = {k: s for k, s in expected.items() if not k.startswith(ignore_prefix)}
        given = {k: s for k, s in given.items() if not k.startswith(ignore_prefix)}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    mismatched = sorted(k for k in expected.keys() & given.keys() if expected[k] != given[k])
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if mismatched:
        k = mismatched[0]
        parts.append(f"{len(mismatched)} of another shape (e.g. {k}: {given[k]} vs {expected[k]})")
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    raise CheckpointError(f"{source} does not fit {arch}: " + ", ".join(parts) + " tensors")


def head_report(model: nn.Module, state_dict: dict[str, torch.Tensor], path: str | os.PathLike, head_name: str) -> str:
    """One line: which classifier tensors of ``path`` were not loaded into ``model`` and why, and how many were."""
    skipped = [k for k in state_dict if k.startswith(f"{head_name}.")]
    given = tuple(state_dict[f"{head_name}.weight"].shape)
    ours = model.state_dict().get(f"{head_name}.weight")
    if ours is None:
        why = "the model has no classifier: num_classes=0"
    else:
        why = (
            f"shape {given} in the file vs {tuple(ours.shape)} in the model: another number of classes, "
            "so the classifier keeps its fresh initialisation"
        )
    arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
    loaded = len(state_dict) - len(skipped)
    return f"{path}: not loaded into {arch}: {', '.join(skipped)} ({why}); the other {loaded} tensors were loaded"


COUNTER = "num_batches_tracked"


def drop_counters(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` without the BN batch counters that ``model`` has no place for: a frozen BN (torchvision's
    ``FrozenBatchNorm2d``, as detection backbones use) keeps the statistics but not the counter, which only a
    training-mode BN reads."""
    own = model.state_dict()
    return {
        k: v
        for k, v in state_dict.items()
        if not (k.endswith(f".{COUNTER}") and k not in own and k.removesuffix(COUNTER) + "running_mean" in own)
    }


def load_weights(model: nn.Module, path: str | os.PathLike, use_ema: bool = False, quiet: bool = False) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` strictly; return ``model``.

    If only the classifier differs (fine-tuning from 1000 to N classes, or ``num_classes=0``), the
    model keeps its own classifier and every other tensor is loaded; unless ``quiet``, one line on stderr
    (rank 0 of a multi-process run) names the tensors left out and why (:func:`head_report`). BN batch counters
    are left out where the model's norms have none (frozen BNs, :func:`drop_counters`).
    """
    state_dict = drop_counters(model, read_state_dict(path, use_ema=use_ema))
    head_prefix = ""
    head_name = getattr(model, "pretrained_cfg", {}).get("classifier")
    if head_name:
        given = state_dict.get(f"{head_name}.weight")
        ours = model.state_dict().get(f"{head_name}.weight")
        # Another label set, or no head at all (num_classes=0): keep the model's own head.
        if given is not None and (ours is None or ours.shape != given.shape):
            head_prefix = f"{head_name}."
    check_compatible(model, state_dict, str(path), ignore_prefix=head_prefix)
    if head_prefix:
        # Said before loading, once per run: a silently fresh head looks like a broken checkpoint when
        # accuracy starts at chance, and a wrong num_classes would otherwise go unnoticed.
        if not quiet and is_main_process():
            print(head_report(model, state_dict, path, head_name), file=sys.stderr)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head_prefix)}
    model.load_state_dict(state_dict, strict=not head_prefix)
    return model
