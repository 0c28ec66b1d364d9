"""The band reading every study reader shares (entropyctl.controllers.band)."""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyctl.controllers.band import (
    WINDOW,
    alpha_at_bound,
    band_health,
    moving_average,
    read_band,
    settling_step,
)

EPS = float(np.finfo(float).eps)

values_lists = st.lists(
    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=200
)


@settings(max_examples=200, deadline=None)
@given(values=values_lists, window=st.integers(1, 60))
def test_moving_average_is_the_mean_of_the_trailing_window(values: list[float], window: int) -> None:
    """Against the direct mean of the window (math.fsum: correctly rounded). The running sums lose at
    most a few ulps of the largest partial sum of |values| per operation: that bounds the error."""
    average = moving_average(values, window)
    scale = math.fsum(abs(v) for v in values)
    for i, got in enumerate(average):
        part = values[max(0, i - window + 1) : i + 1]
        expected = math.fsum(part) / len(part)
        tolerance = 4 * len(values) * EPS * scale / len(part)
        assert abs(got - expected) <= tolerance, (i, got, expected)


def test_moving_average_skips_nans() -> None:
    average = moving_average([1.0, math.nan, 3.0, math.nan], window=2)
    assert average[0] == 1.0 and average[1] == 1.0 and average[2] == 3.0 and average[3] == 3.0
    assert math.isnan(moving_average([math.nan, math.nan], window=1)[0])


def test_read_band_first_step_and_share() -> None:
    """Entropy 1.0 for 60 steps, then 0.4 (the target) for 140: the 50-step average enters ±20 % of
    0.4 once it is ≤ 0.48, i.e. when ≥ 44 of its 50 readings are 0.4 — step index 60 + 43 = 103 —
    and stays there."""
    entropy = [1.0] * 60 + [0.4] * 140
    band = read_band(entropy, 0.4)
    assert band.first_in_band == 103
    assert band.in_band_share == 1.0
    assert band.share_after_first([i >= 150 for i in range(200)]) == pytest.approx(50 / 97)
    # a per-step target gives the same as a constant one
    assert read_band(entropy, [0.4] * 200).first_in_band == 103
    # `start` skips the search before it; partial windows count unless skipped
    early = [0.4] * 10 + [1.0] * 190
    assert read_band(early, 0.4).first_in_band == 0
    assert read_band(early, 0.4, start=WINDOW - 1).first_in_band is None


def test_read_band_never_in_band() -> None:
    band = read_band([1.0] * 100, 0.4)
    assert band.first_in_band is None and band.in_band_share == 0.0
    assert math.isnan(band.share_after_first([True] * 100))


def test_read_band_share_counts_the_steps_that_leave() -> None:
    """In band for steps 0-99 (average 0.4), then far above: the share after the first step counts
    every later step, in band or not."""
    entropy = [0.4] * 100 + [2.0] * 100
    band = read_band(entropy, 0.4)
    inside = sum(abs(statistics.fmean(entropy[max(0, i - 49) : i + 1]) - 0.4) <= 0.08 for i in range(200))
    assert band.first_in_band == 0
    assert band.in_band_share == pytest.approx(inside / 200)
    assert 0.4 < band.in_band_share < 0.6


def test_alpha_at_bound_absorbs_rounding_only() -> None:
    low, high = 1e-5, 1.0
    logged = [low * (1 + 1e-12), 1.0077910068864193e-05, 0.5, high * (1 - 1e-12), 1.5, 0.0]
    assert alpha_at_bound(logged, low, high).tolist() == [True, False, False, True, True, True]
    assert alpha_at_bound([0.0, 0.0], 0.0, 0.0).all()  # fixed α = 0: always at its (only) value


def test_the_tuning_page_snippet_reads_a_committed_run(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/tuning.md's snippet, run on a committed aer run, prints what the robustness reading says."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "tuning.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "read_band" in b)
    run = root / "benchmarks" / "robustness" / "levels12" / "aer" / "seed0"
    exec(snippet.replace("runs/20261203-072718-aer", str(run)), {})  # noqa: S102
    first, share, at_bound = capsys.readouterr().out.split()
    reading = json.loads((root / "benchmarks" / "robustness" / "reading.json").read_text())
    (committed,) = [r for r in reading["tasks"]["levels12"]["arms"]["aer"]["runs"] if r["run"] == "aer/seed0"]
    assert int(first) == committed["first_in_band"]  # the step it prints is the index + 1 the reading counts
    assert float(share) == committed["in_band_share"]
    assert 0.0 <= float(at_bound) <= 1.0


@settings(max_examples=300, deadline=None)
@given(
    flags=st.lists(st.booleans(), max_size=400),
    share=st.sampled_from([Fraction(9, 10), Fraction(1, 2), Fraction(3, 4), Fraction(1)]),
    start=st.integers(0, 50),
)
def test_settling_step_is_the_first_step_the_share_holds_from(
    flags: list[bool], share: Fraction, start: int
) -> None:
    """Oracle: exact rational shares, step by step. (The function divides in floats with a 1e-12
    slack; a share c/r below these targets by a nonzero amount is below it by ≥ 1/(4r) ≥ 6e-4 here.)"""
    expected = next(
        (i for i in range(start, len(flags)) if Fraction(sum(flags[i:]), len(flags) - i) >= share), None
    )
    assert settling_step(flags, share=float(share), start=start) == expected


def test_settling_step_examples() -> None:
    # 20 steps out, then 10 in, 1 out, 9 in: from step 19 on 19 of 21 are in band (0.905), from 18 on
    # 19 of 22 (0.864)
    flags = [False] * 20 + [True] * 10 + [False] + [True] * 9
    assert settling_step(flags) == 19
    assert settling_step(flags, share=1.0) == 31
    assert settling_step([False, False]) is None
    assert settling_step([]) is None


def test_band_health_of_a_run_that_falls_through_the_band() -> None:
    """H* = 0.5 for 100 steps (1-based step numbers 1…200), then 0.25 for 100: the 50-step average
    is in band from step 50 (its first full window), leaves it below once more than 20 of its readings
    are 0.25 (0.5·(50 − k)/50 + 0.25·k/50 < 0.4 ⇔ k > 20: from step 121), and never returns. Of the
    151 steps from step 50 on, 71 are in band and 80 below; no step from which ≥ 90 % are in band."""
    steps = list(range(1, 201))
    entropy = [0.5] * 100 + [0.25] * 100
    target = [math.nan] + [0.5] * 199  # no target before anchoring (the first reading)
    alpha = [1e-5] * 60 + [0.01] * 140
    health = band_health(steps, entropy, target, alpha, (1e-5, 1.0))
    assert health.first_in_band == 50
    assert health.in_band == pytest.approx(71 / 151) and health.below == pytest.approx(80 / 151)
    assert health.above == 0.0
    assert health.settles_at is None and not health.settled_in_first_half
    assert health.alpha_at_bound == pytest.approx(11 / 151)  # steps 50…60 at the floor
    assert "not settled" in health.sentence() and "step 50" in health.sentence()


def test_band_health_counts_steps_by_the_runs_own_numbers() -> None:
    """A run resumed from step 100 numbers its rows 101…; and a run settled from its first full window
    has settled within its first half."""
    health = band_health(range(101, 301), [0.4] * 200, [0.4] * 200)
    assert health.first_in_band == health.settles_at == 150
    assert health.in_band == 1.0 and health.alpha_at_bound is None
    assert health.settled_in_first_half  # 50th of 200 rows
    assert "in band from step 150 to the end" in health.sentence()
    assert health.as_dict()["settled_in_first_half"] is True


def test_band_health_of_short_and_never_reached_runs() -> None:
    short = band_health(range(1, 4), [0.4] * 3, [0.4] * 3)
    assert short.first_in_band is None and "fewer than the 50-step window" in short.sentence()
    never = band_health(range(1, 101), [1.0] * 100, [0.4] * 100)
    assert never.first_in_band is None and never.settles_at is None
    assert "never reached in 100 steps" in never.sentence()


@settings(max_examples=200, deadline=None)
@given(
    entropy=st.lists(st.floats(0.01, 3.0), min_size=WINDOW, max_size=300),
    target=st.floats(0.05, 2.0),
)
def test_band_health_shares_partition_the_steps_after_the_first(entropy: list[float], target: float) -> None:
    """In band, below and above count disjoint sets of steps that cover every step from the first in
    band on (below/above split the steps out of band by side, so no step sits on an edge twice): they
    sum to 1 up to the rounding of three means and their sum (≤ 2 ulps each); and no step before the
    first full window counts (a run may settle at a step just out of band, as settling_step allows)."""
    health = band_health(range(1, len(entropy) + 1), entropy, [target] * len(entropy))
    if health.first_in_band is None:
        assert health.in_band == health.below == health.above == 0.0
        return
    assert abs(health.in_band + health.below + health.above - 1.0) <= 8 * EPS
    assert health.first_in_band >= WINDOW
    assert health.settles_at is None or health.settles_at >= WINDOW


def test_the_training_page_quotes_the_band_line_of_the_committed_main_job() -> None:
    """docs/training.md shows the end-of-run band line of the main job's seed 0: it is what the trainer's
    reader gives on that committed run's metrics.csv, with the default bounds."""
    from pathlib import Path

    from entropyctl.controllers.aer import AERConfig
    from entropyctl.trainer.run_dir import read_band_health

    root = Path(__file__).resolve().parents[1]
    run = root / "benchmarks" / "default_job_2026-12-03" / "s0"
    health = read_band_health(run / "metrics.csv", AERConfig(name="aer").alpha_bounds)
    assert health is not None
    quoted = [line for line in (root / "docs" / "training.md").read_text().splitlines() if "] band (" in line]
    # the page's short 4-step example ends with the band line of a run too short to read
    assert [line for line in quoted if "not read" not in line] == [f"[entropyctl] {health.sentence()}"]
