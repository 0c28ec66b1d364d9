"""How well an entropy controller holds its band, read off a trajectory (a real run's metrics.csv or the
simulated plant's): the criterion of docs/controllers.md — the 50-step trailing moving average of the
entropy within ±20 % of the target H* — the first step that meets it, the share of later steps that do,
and how often α sits at one of its bounds.

One definition for every reader: the end of ``entropyctl train`` (``band`` in summary.json, from
:func:`band_health`), ``entropyctl report``, ``benchmarks/collapse_reading.py``, ``settling.py``,
``robustness_reading.py``, ``plant_families.py`` and the closed-loop tests all call these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "HALF_WIDTH",
    "SETTLED_SHARE",
    "WINDOW",
    "BandHealth",
    "BandReading",
    "alpha_at_bound",
    "band_health",
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


@dataclass(frozen=True)
class BandHealth:
    """How one run held its band, in the terms of the criterion above: steps are the run's own step
    numbers (``metrics.csv``'s ``step``); shares count the steps from the first one in band to the end
    (full windows only: the first ``WINDOW − 1`` steps are never in band). ``below``/``above``: the
    moving average under/over the band; ``settles_at``: :func:`settling_step`; ``alpha_at_bound``:
    the share of those steps with α at a bound (None when the bounds are not known); ``steps``: how many
    steps the run has, ``first_step`` the number of its first."""

    steps: int
    first_step: int
    first_in_band: int | None
    in_band: float
    below: float
    above: float
    settles_at: int | None
    alpha_at_bound: float | None

    @property
    def settled_in_first_half(self) -> bool:
        """Settled, and early enough that "once settled" covers at least half the run (the settling
        step's 0-based position, times two, at most the run's length: benchmarks/settling.py's test)."""
        return self.settles_at is not None and 2 * (self.settles_at - self.first_step) <= self.steps

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "settled_in_first_half": self.settled_in_first_half}

    def sentence(self) -> str:
        """One line for the end of a run."""
        head = f"band ({WINDOW}-step average within ±{HALF_WIDTH:.0%} of H*)"
        if self.steps < WINDOW:
            return f"{head}: not read, the run has {self.steps} steps, fewer than the {WINDOW}-step window"
        if self.first_in_band is None:
            return f"{head}: never reached in {self.steps} steps"
        text = (
            f"{head}: first reached at step {self.first_in_band}; from there in band on {self.in_band:.0%} "
            f"of the steps, below on {self.below:.0%}, above on {self.above:.0%}"
        )
        if self.alpha_at_bound is not None:
            text += f", α at a bound on {self.alpha_at_bound:.0%}"
        if self.settles_at is None:
            return text + f"; not settled (from no step on are ≥ {SETTLED_SHARE:.0%} of the steps in band)"
        share = (self.settles_at - self.first_step) / self.steps
        late = "" if self.settled_in_first_half else ": later than its first half, so this says little"
        return (
            text + f"; settled: ≥ {SETTLED_SHARE:.0%} in band from step {self.settles_at} to the end "
            f"({share:.2f} of the way into the run{late})"
        )


def band_health(
    steps: Sequence[int] | np.ndarray,
    entropy: Sequence[float] | np.ndarray,
    target: Sequence[float] | np.ndarray,
    alpha: Sequence[float] | np.ndarray | None = None,
    bounds: tuple[float, float] | None = None,
) -> BandHealth | None:
    """The :class:`BandHealth` of one run from its per-step ``step``, ``entropy``, ``target_entropy``
    (NaN before anchoring: never in band) and, for the α-at-bound share, ``alpha`` and its ``bounds``;
    None for a run without a target (no finite positive ``target_entropy``: ``fixed``, ``clip_higher``)."""
    numbers = np.asarray(steps, dtype=int)
    entropy = np.asarray(entropy, dtype=float)
    goal = np.asarray(target, dtype=float)
    with np.errstate(invalid="ignore"):
        if not np.any(np.isfinite(goal) & (goal > 0)):
            return None
    reading = read_band(entropy, goal, start=WINDOW - 1)
    first_step = int(numbers[0]) if numbers.size else 1
    first = reading.first_in_band
    if first is None:
        return BandHealth(len(numbers), first_step, None, 0.0, 0.0, 0.0, None, None)
    after = slice(first, None)
    outside = ~reading.in_band[after]  # out of band, split by side: the three shares cover every step
    with np.errstate(invalid="ignore"):
        below = float((outside & (reading.average[after] < goal[after])).mean())
        above = float((outside & (reading.average[after] > goal[after])).mean())
    settles = settling_step(reading.in_band, start=WINDOW - 1)
    at_bound = None
    if alpha is not None and bounds is not None:
        at_bound = reading.share_after_first(alpha_at_bound(alpha, *bounds))
    return BandHealth(
        steps=len(numbers),
        first_step=first_step,
        first_in_band=int(numbers[first]),
        in_band=reading.in_band_share,
        below=below,
        above=above,
        settles_at=None if settles is None else int(numbers[settles]),
        alpha_at_bound=at_bound,
    )
