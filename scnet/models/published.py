"""The published numbers scnet uses (accuracy, size, the release's checkpoints, a throughput anchor), each with
its source, read from ``published.yaml`` beside this file.

The zoo reads them (``PUBLISHED``, the release's checkpoints and accuracies) and so do the tables (the
published columns, the GPU-hour estimate): they live here, below both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PATH = Path(__file__).with_name("published.yaml")


class PublishedError(ValueError):
    """``published.yaml`` is not what it should be: one line naming the file and the entry."""


@dataclass(frozen=True)
class Source:
    """Where published numbers come from, and how they were measured."""

    key: str
    title: str
    protocol: str
    url: str | None = None
    # The folder (URL ending in /) that the source's checkpoint files are published under.
    weights_url: str | None = None


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


def read_mapping(path: Path, error: type[ValueError] = PublishedError) -> dict[str, Any]:
    """The YAML mapping in ``path``; ``error`` (one line naming the file) when it cannot be read or is not one."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise error(f"{path}: cannot read ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping")
    return data


def _error_to_accuracy(entry: dict[str, Any], acc: str, err: str) -> float | None:
    if entry.get(acc) is not None:
        return float(entry[acc])
    if entry.get(err) is not None:
        return round(100.0 - float(entry[err]), 2)
    return None


@functools.cache
def published_numbers() -> dict[str, Published]:
    """Model name -> its published numbers, from ``published.yaml``."""
    path = PATH
    data = read_mapping(path)
    sources = {
        key: Source(key, s["title"], " ".join(str(s.get("protocol", "")).split()), s.get("url"), s.get("weights_url"))
        for key, s in data["sources"].items()
    }
    fields = {"source", "top1", "top5", "top1_err", "top5_err", "params_m", "madds_g", "checkpoint", "counted"}
    out = {}
    for model, entry in data["models"].items():
        extra = sorted(set(entry) - fields)
        if extra:
            raise PublishedError(f"{path}: {model}: unknown key {extra[0]!r} (allowed: {', '.join(sorted(fields))})")
        source_key = entry.get("source")
        if source_key is not None and source_key not in sources:
            raise PublishedError(f"{path}: {model}: unknown source {source_key!r}")
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
    t = read_mapping(PATH)["throughput"]
    s = t["source"]
    source = Source("throughput", s["title"], " ".join(str(s["protocol"]).split()), s.get("url"))
    return Throughput(source, str(t["model"]), str(t["device"]), float(t["images_per_second"]))


def sources() -> dict[str, Source]:
    """Every cited source, by key."""
    return {p.source.key: p.source for p in published_numbers().values() if p.source is not None}
