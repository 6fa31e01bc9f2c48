"""Where a table row's training runs live: one folder per resolved config and seed, shared by every table.

A row's run is identified by what it trains, not by the table that asked for it: the resolved config (model
lines, recipe, data root, overrides) minus the keys that do not change the result (output folder, loader
workers, logging) and minus the seed, which names a sub-folder:

    <out>/runs/<model>-<key>/seed<seed>/     config.yaml, metrics.jsonl, last.pth, best.pth, eval.json

``key`` is a hash of the settings that differ from the schema's defaults, so scnet50 in the release, backbones
and ablation tables is one run (per seed), a changed setting is a new folder (never a silent reuse), and a
later version that adds a config key with a default does not orphan the runs made before it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, config_to_dict

RUNS = "runs"
# Keys that may change between a run and its resumption without changing what is trained.
MAY_DIFFER = frozenset({"output_dir", "data.workers", "train.log_every", "train.tensorboard"})
# Not in the key: the seed has its own sub-folder.
SEED = "train.seed"


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"section.key": value}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings(cfg: Config) -> dict[str, Any]:
    """The settings that make the run: every key of ``cfg`` that differs from the defaults, except the seed and
    :data:`MAY_DIFFER`."""
    defaults = flat(config_to_dict(Config()))
    wanted = flat(config_to_dict(cfg))
    ignored = MAY_DIFFER | {SEED}
    return {k: v for k, v in wanted.items() if k not in ignored and v != defaults.get(k)}


def run_key(cfg: Config) -> str:
    """``<model>-<10 hex digits>``: the group folder of the runs of ``cfg``'s settings (all seeds)."""
    text = json.dumps(settings(cfg), sort_keys=True, default=str)
    return f"{cfg.model.name}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class SeedRun:
    """One training run of a row: its seed and folder."""

    seed: int
    folder: Path


def seed_runs(out: Path, cfg: Config, seeds: int) -> list[SeedRun]:
    """The ``seeds`` runs of ``cfg``: seeds ``train.seed``, ``train.seed + 1``, ... each in its own folder."""
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    group = Path(out) / RUNS / run_key(cfg)
    first = cfg.train.seed
    return [SeedRun(seed, group / f"seed{seed}") for seed in range(first, first + seeds)]
