"""The tables as data: which rows each holds, the config of each row, and the published numbers with sources.

``published.yaml`` holds every published number scnet uses, each with its source; ``release.yaml``,
``backbones.yaml`` and ``ablation.yaml`` list a table's rows, each a config under the repository's
``configs/`` folder. Everything is checked on load, so a typo in a table file is one clear line.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
TABLES = ("release", "backbones", "ablation")


class TableError(ValueError):
    """A table file, row name or config that is not what it should be: one line for the user."""


@dataclass(frozen=True)
class Source:
    """Where published numbers come from, and how they were measured."""

    key: str
    title: str
    protocol: str
    url: str | None = None


@dataclass(frozen=True)
class Published:
    """A model's published numbers as its source states them (accuracy derived as 100 - error if only that)."""

    model: str
    source: Source | None
    top1: float | None = None
    top5: float | None = None
    params_m: float | None = None
    madds_g: float | None = None
    checkpoint: str | None = None
    # Counted from the release's own model definitions (not a measured accuracy).
    counted_params: int | None = None
    counted_gmacs: float | None = None


@dataclass(frozen=True)
class Throughput:
    """A published training throughput: the anchor that GPU-hour estimates scale from."""

    source: Source
    model: str
    device: str
    images_per_second: float


@dataclass(frozen=True)
class Row:
    """One row of a table: a name, its training config and its published numbers (None: not published)."""

    row: str
    config: Path
    family: str
    published: Published | None
    note: str = ""

    @property
    def published_top1(self) -> float | None:
        return self.published.top1 if self.published is not None else None


@dataclass(frozen=True)
class Table:
    """A named list of rows."""

    name: str
    title: str
    description: str
    rows: tuple[Row, ...]

    def select(self, names: list[str] | None) -> list[Row]:
        """The rows called ``names`` (in table order), or all of them; an unknown name is an error."""
        if not names:
            return list(self.rows)
        known = {r.row for r in self.rows}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise TableError(f"table {self.name} has no row {unknown[0]!r}; its rows: {', '.join(sorted(known))}")
        return [r for r in self.rows if r.row in names]


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (rows name their configs relative to it)."""
    for candidate in (HERE.parents[1] / "configs", Path.cwd() / "configs"):
        if candidate.is_dir():
            return candidate
    raise TableError("cannot find the configs/ folder: run scnet-table from a clone of the scnet repository")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise TableError(f"{path}: cannot read ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise TableError(f"{path}: expected a mapping")
    return data


def _only(keys: set[str], allowed: set[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise TableError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _error_to_accuracy(entry: dict[str, Any], acc: str, err: str) -> float | None:
    if entry.get(acc) is not None:
        return float(entry[acc])
    if entry.get(err) is not None:
        return round(100.0 - float(entry[err]), 2)
    return None


@functools.cache
def published_numbers() -> dict[str, Published]:
    """Model name -> its published numbers, from ``published.yaml``."""
    path = HERE / "published.yaml"
    data = _read(path)
    sources = {
        key: Source(key, s["title"], " ".join(str(s.get("protocol", "")).split()), s.get("url"))
        for key, s in data["sources"].items()
    }
    fields = {"source", "top1", "top5", "top1_err", "top5_err", "params_m", "madds_g", "checkpoint", "counted"}
    out = {}
    for model, entry in data["models"].items():
        _only(set(entry), fields, f"{path}: {model}")
        source_key = entry.get("source")
        if source_key is not None and source_key not in sources:
            raise TableError(f"{path}: {model}: unknown source {source_key!r}")
        counted = entry.get("counted") or {}
        out[model] = Published(
            model=model,
            source=sources.get(source_key) if source_key else None,
            top1=_error_to_accuracy(entry, "top1", "top1_err"),
            top5=_error_to_accuracy(entry, "top5", "top5_err"),
            params_m=entry.get("params_m"),
            madds_g=entry.get("madds_g"),
            checkpoint=entry.get("checkpoint"),
            counted_params=counted.get("params"),
            counted_gmacs=counted.get("gmacs"),
        )
    return out


def throughput_anchor() -> Throughput:
    """The published throughput that ``scnet-table list --estimate`` scales from."""
    t = _read(HERE / "published.yaml")["throughput"]
    s = t["source"]
    source = Source("throughput", s["title"], " ".join(str(s["protocol"]).split()), s.get("url"))
    return Throughput(source, str(t["model"]), str(t["device"]), float(t["images_per_second"]))


def sources() -> dict[str, Source]:
    """Every cited source, by key."""
    return {p.source.key: p.source for p in published_numbers().values() if p.source is not None}


@functools.cache
def load_table(name: str) -> Table:
    """The table called ``name`` (one of :data:`TABLES`), its configs checked to exist."""
    if name not in TABLES:
        raise TableError(f"no table {name!r}; the tables: {', '.join(TABLES)}")
    path = HERE / f"{name}.yaml"
    data = _read(path)
    _only(set(data), {"title", "description", "rows"}, str(path))
    published = published_numbers()
    root = configs_dir()
    rows, seen = [], set()
    for i, entry in enumerate(data["rows"]):
        where = f"{path}: row {i + 1}"
        _only(set(entry), {"row", "config", "family", "published", "note"}, where)
        name_ = str(entry["row"])
        if name_ in seen:
            raise TableError(f"{where}: row {name_!r} appears twice")
        seen.add(name_)
        config = root / entry["config"]
        if not config.is_file():
            raise TableError(f"{where}: no such config {config}")
        key = entry.get("published")
        if key is not None and key not in published:
            raise TableError(f"{where}: no published numbers for {key!r} in published.yaml")
        note = " ".join(str(entry.get("note") or "").split())
        rows.append(Row(name_, config, str(entry["family"]), published.get(key) if key else None, note))
    return Table(name, str(data["title"]), " ".join(str(data["description"]).split()), tuple(rows))
