"""The tables as data: which rows each holds and the config of each row.

The published numbers of each row come from ``scnet/models/published.yaml``; ``release.yaml``,
``backbones.yaml`` and ``ablation.yaml`` list a table's rows, each a config under the repository's
``configs/`` folder. Everything is checked on load, so a typo in a table file is one clear line.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.published import Published, published_numbers, read_mapping

HERE = Path(__file__).parent
TABLES = ("release", "backbones", "ablation")


class TableError(ValueError):
    """A table file, row name or config that is not what it should be: one line for the user."""


@dataclass(frozen=True)
class Row:
    """One row of a table: a name, its training config and its published numbers (None: not published)."""

    row: str
    config: Path
    family: str
    published: Published | None
    note: str = ""
    baseline: str | None = None
    """The row of the same table that this row is compared with (the same network without self-calibration,
    or for an ablation row the release's SCNet-50); None for a baseline itself."""

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
    return read_mapping(path, TableError)


def _only(keys: set[str], allowed: set[str], where: str) -> None:
    extra = sorted(keys - allowed)
    if extra:
        raise TableError(f"{where}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(allowed))})")


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
        _only(set(entry), {"row", "config", "family", "published", "note", "baseline"}, where)
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
        baseline = entry.get("baseline")
        rows.append(Row(name_, config, str(entry["family"]), published.get(key) if key else None, note, baseline))
    for row in rows:
        if row.baseline is not None and (row.baseline == row.row or row.baseline not in seen):
            raise TableError(f"{path}: row {row.row}: baseline {row.baseline!r} is not another row of this table")
    return Table(name, str(data["title"]), " ".join(str(data["description"]).split()), tuple(rows))
