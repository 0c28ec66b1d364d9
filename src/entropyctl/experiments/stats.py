"""The seed statistics the study readings share: an arm's mean ± sample std over its seeds, and one arm
minus another paired by seed — the mean of the per-seed differences ± its standard error (std/√n).

Runs of one seed share the warm start and the data order, so the paired difference removes what the
seed alone sets; ``benchmarks/collapse_reading.py``, ``seed_spread.py`` and ``horizon_reading.py`` all
read differences this way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["mean_std", "paired_difference"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (NaN for fewer than two values). A NaN among the
    values (a seed with no such number, e.g. a run never in band has no share in band after first
    reaching it) makes both NaN: the arm has no mean of it over its seeds."""
    if not values:
        raise ValueError("mean_std: no values")
    if any(math.isnan(v) for v in values):  # statistics.stdev fails on a NaN instead of returning one
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def paired_difference(base: Sequence[float], other: Sequence[float]) -> tuple[float, float]:
    """``other − base`` paired element by element (one element per seed): the mean of the differences
    and its standard error (NaN for fewer than two pairs)."""
    if len(base) != len(other):
        raise ValueError(f"paired_difference: {len(base)} and {len(other)} values do not pair")
    mean, std = mean_std([b - a for a, b in zip(base, other, strict=True)])
    return mean, std / math.sqrt(len(base))
