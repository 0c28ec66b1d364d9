"""How well an entropy controller holds its band, read off a trajectory (a real run's metrics.csv or the
simulated plant's): the criterion of docs/controllers.md — the 50-step trailing moving average of the
entropy within ±20 % of the target H* — the first step that meets it, the share of later steps that do,
and how often α sits at one of its bounds.

One definition for every reader: ``benchmarks/collapse_reading.py``, ``benchmarks/robustness_reading.py``,
``benchmarks/plant_families.py`` and the closed-loop tests all call these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "HALF_WIDTH",
    "SETTLED_SHARE",
    "WINDOW",
    "BandReading",
    "alpha_at_bound",
    "moving_average",
    "read_band",
    "settling_step",
]

WINDOW = 50
"""Steps in the trailing moving average the band is checked on."""
HALF_WIDTH = 0.2
"""The band: within ±HALF_WIDTH·H* of H*."""
SETTLED_SHARE = 0.9
"""The share of steps in band the issue asks for "once settled" (``settling_step``)."""


def moving_average(values: Sequence[float] | np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Entry i: the mean of ``values[i − window + 1 .. i]``, ignoring NaNs; the first ``window − 1``
    entries average what exists so far (a full window from entry ``window − 1`` on)."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or values.size == 0:
        return values.copy()
    finite = np.isfinite(values)
    total = np.cumsum(np.where(finite, values, 0.0))
    count = np.cumsum(finite.astype(float))
    lagged_total = np.concatenate([np.zeros(window), total[:-window]])[: values.size]
    lagged_count = np.concatenate([np.zeros(window), count[:-window]])[: values.size]
    inside = count - lagged_count
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inside > 0, (total - lagged_total) / np.maximum(inside, 1.0), np.nan)


def alpha_at_bound(alpha: Sequence[float] | np.ndarray, low: float, high: float) -> np.ndarray:
    """Per step: is α at (or past) a bound? A relative 1e-9 slack absorbs the rounding of
    an α written to metrics.csv and read back."""
    alpha = np.asarray(alpha, dtype=float)
    return (alpha <= low * (1 + 1e-9)) | (alpha >= high * (1 - 1e-9))


@dataclass(frozen=True)
class BandReading:
    """``first_in_band``: index (0-based) of the first step, at or after ``start``, whose moving average
    is in band, None when none is; ``in_band_share``: the share of steps from there on that are in band
    (0 when none is); ``average``: the moving average at every step; ``in_band``: per step, in band."""

    first_in_band: int | None
    in_band_share: float
    average: np.ndarray
    in_band: np.ndarray

    def share_after_first(self, flags: Sequence[bool] | np.ndarray) -> float:
        """The share of ``flags`` (one per step, e.g. α at a bound) set from the first in-band step on;
        NaN when the band is never reached."""
        if self.first_in_band is None:
            return math.nan
        later = np.asarray(flags, dtype=bool)[self.first_in_band :]
        return float(later.mean()) if later.size else math.nan


def read_band(
    entropy: Sequence[float] | np.ndarray,
    target: float | Sequence[float] | np.ndarray,
    *,
    start: int = 0,
    window: int = WINDOW,
    half_width: float = HALF_WIDTH,
) -> BandReading:
    """The band reading of one trajectory. ``target`` is H*, one value or one per step (a run logs it
    every step); ``start`` skips the steps a settling search should not look at (e.g. ``window − 1``
    to consider full windows only)."""
    average = moving_average(entropy, window)
    goal = np.broadcast_to(np.asarray(target, dtype=float), average.shape)
    in_band = np.abs(average - goal) <= half_width * goal
    hits = np.flatnonzero(in_band[start:])
    if hits.size == 0:
        return BandReading(None, 0.0, average, in_band)
    first = start + int(hits[0])
    return BandReading(first, float(in_band[first:].mean()), average, in_band)


def settling_step(
    in_band: Sequence[bool] | np.ndarray, *, share: float = SETTLED_SHARE, start: int = 0
) -> int | None:
    """The first step (0-based, at or after ``start``) from which, to the end of the run, at least
    ``share`` of the steps are in band: "≥ 90 % in band once settled" read as the earliest step it
    holds from. None when it holds from no step. A step near the end of a run holds trivially (the
    last in-band step always does), so a reader compares it with the run's length."""
    flags = np.asarray(in_band, dtype=float)[start:]
    if flags.size == 0:
        return None
    # from step i on: (in-band steps from i) / (steps from i), for every i at once
    remaining = np.arange(flags.size, 0, -1, dtype=float)
    suffix_share = np.cumsum(flags[::-1])[::-1] / remaining
    hits = np.flatnonzero(suffix_share >= share - 1e-12)
    return None if hits.size == 0 else start + int(hits[0])
