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

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, config_to_dict, load_config
from ..data.builtin import resolve_root
from ..train.output import CONFIG
from .spec import TableError

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
        raise TableError(f"--seeds must be at least 1, got {seeds}")
    group = Path(out) / RUNS / run_key(cfg)
    first = cfg.train.seed
    return [SeedRun(seed, group / f"seed{seed}") for seed in range(first, first + seeds)]


def absolute_root(cfg: Config) -> Config:
    """``cfg`` with its data root as the runner gives it now: an absolute path (the built-in demo set's folder),
    so that a config saved with a relative root compares equal (a root that is gone is made absolute as it is)."""
    try:
        root = resolve_root(cfg.data.root).resolve()
    except ValueError:
        root = Path(cfg.data.root).expanduser().resolve()
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(root)))


def adopt_earlier_run(out: Path, table: str, row: str, run: SeedRun, cfg: Config) -> str | None:
    """Move a run that scnet-table made before this store existed (``<out>/<table>/<row>/``) to ``run``'s folder
    when it trained the same settings with the same seed, so an interrupted sweep goes on instead of starting
    again; returns what was done, in one line (None: there is no such run, or ``run`` already has a folder).
    A run with other settings stays where it is."""
    earlier = Path(out) / table / row
    if run.folder.exists() or not (earlier / CONFIG).is_file():
        return None
    try:
        saved = absolute_root(load_config(earlier / CONFIG))
    except ConfigError:
        saved = None
    if saved is None or saved.train.seed != cfg.train.seed or settings(saved) != settings(cfg):
        return f"{earlier}: a run of an earlier scnet-table with other settings or seed, left where it is"
    run.folder.parent.mkdir(parents=True, exist_ok=True)
    earlier.rename(run.folder)
    return f"{earlier}: a run of an earlier scnet-table with these settings, moved to {run.folder}"
