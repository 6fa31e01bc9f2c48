"""Per-row statistics over seeds and the gain of a row over its baseline, as the tables report them.

A row trained with N seeds has N top-1 numbers; the table reports their mean, their sample standard deviation
(N - 1 in the denominator; none for one seed) and N. The gain over the baseline is a paired difference: seed
s of the row against seed s of the baseline (the same data order and initial random state of everything the
two models share), so the gain is the mean of the per-seed differences and its spread their standard
deviation. A gain whose size is not larger than its spread is marked not significant; with fewer than two
paired seeds significance is not judged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of ``values``; (None, None) for none, std None for one value."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


@dataclass(frozen=True)
class Gain:
    """A row's top-1 gain over its baseline from the seeds both have."""

    gain: float | None
    std: float | None
    seeds: int
    significant: bool | None


def paired_gain(row: Mapping[int, float], baseline: Mapping[int, float]) -> Gain:
    """The gain of ``row`` over ``baseline`` (each: seed -> top-1), from the seeds both were evaluated with."""
    paired = sorted(set(row) & set(baseline))
    differences = [row[s] - baseline[s] for s in paired]
    gain, std = mean_std(differences)
    significant = None if gain is None or std is None else bool(abs(gain) > std)
    return Gain(gain, std, len(paired), significant)


def rounded(value: float | None, digits: int = 3) -> float | None:
    """``value`` rounded for the report (None stays None; NaN, which no evaluation gives, too)."""
    if value is None or math.isnan(value):
        return None
    return round(float(value), digits)
