"""benchmarks/band_misses.py: the split of the steps outside the band (below it; above it after a bonus;
above it with no bonus in reach) on hand-made trajectories, and the committed reading reproduced from the
committed runs and quoted by docs/robustness.md."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from committed_runs import assert_docs_quote, load_benchmark

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "band_misses.md"


@pytest.fixture(scope="module")
def misses() -> Any:
    return load_benchmark("band_misses")


def _split(misses: Any, entropy: list[float], alpha: list[float], **kw: Any) -> dict[str, Any]:
    h = np.array(entropy)
    result: dict[str, Any] = misses.split_misses(h, np.full_like(h, 1.0), np.array(alpha), **kw)
    return result


def test_a_run_on_target_is_all_in_band(misses: Any) -> None:
    out = _split(misses, [1.0] * 300, [1e-3] * 300)
    assert out["first_in_band"] == 49 and out["in_band"] == 1.0  # the first full 50-step window
    assert out["below"] == out["above_after_bonus"] == out["above_no_bonus"] == 0.0


def test_below_and_above_are_told_apart_by_the_alpha_before(misses: Any) -> None:
    # 100 steps on target, 200 far below, 200 far above: the 50-step average crosses each edge within
    # the window, so count the steps from the averages themselves
    entropy = [1.0] * 100 + [0.2] * 200 + [3.0] * 200
    # α in the acting decade only on steps 100-149 (the dip): an above-band step within 200 steps of it
    # counts "after a bonus", a later one "no bonus in reach"
    alpha = [1e-5] * 100 + [0.05] * 50 + [1e-5] * 350
    out = _split(misses, entropy, alpha)
    assert out["first_in_band"] == 49  # full windows only, as band_health reads
    shares = [out[k] for k in misses.KINDS]
    assert sum(shares) == pytest.approx(1.0, abs=1e-12)
    average = np.convolve(entropy, np.ones(50) / 50)[: len(entropy)]
    average[:49] = np.cumsum(entropy[:49]) / np.arange(1, 50)
    above = np.flatnonzero(average > 1.2)
    below = np.flatnonzero(average < 0.8)
    counted = 500 - 49  # the steps from the first in band
    assert out["below"] == pytest.approx(below.size / counted)
    # the last step with α ≥ 0.01 is 149: above-band steps up to 349 are "after a bonus"
    after = above[above <= 149 + misses.LOOKBACK].size
    assert out["above_after_bonus"] == pytest.approx(after / counted) and after > 0
    assert out["above_no_bonus"] == pytest.approx((above.size - after) / counted) and above.size > after


def test_the_lookback_and_the_acting_level_move_the_split(misses: Any) -> None:
    entropy = [1.0] * 100 + [3.0] * 300
    alpha = [0.05] * 100 + [1e-5] * 300
    short = _split(misses, entropy, alpha, lookback=10)
    long = _split(misses, entropy, alpha, lookback=400)
    assert long["above_no_bonus"] == 0.0 and long["above_after_bonus"] > 0
    assert short["above_no_bonus"] > 0 and short["above_after_bonus"] < long["above_after_bonus"]
    # nothing reaches an acting level of 0.1: every above-band step is "no bonus in reach"
    high = _split(misses, entropy, alpha, acting=0.1, lookback=400)
    assert high["above_after_bonus"] == 0.0 and high["above_no_bonus"] == long["above_after_bonus"]


def test_a_run_never_in_band_has_no_shares(misses: Any) -> None:
    out = _split(misses, [3.0] * 100, [0.0] * 100)
    assert out["first_in_band"] is None and all(out[k] is None for k in misses.KINDS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_main_job_is_the_collapse_runs_first_400_steps(seed: int) -> None:
    """What lets the reading take no bonus on the main job from collapse v5's no-bonus runs: the main
    job's runs of the defaults are, but for timings, the first 400 rows of v5's runs of the same seed."""

    def rows(path: Path) -> list[dict[str, str]]:
        with path.open() as f:
            return list(csv.DictReader(f))

    job = rows(ROOT / "benchmarks" / "default_job_2026-12-03" / f"s{seed}" / "metrics.csv")
    collapse = rows(ROOT / "benchmarks" / "ablation_collapse_v5" / "aer" / f"seed{seed}" / "metrics.csv")
    keys = [k for k in job[0] if not k.startswith("time")]
    assert len(job) == 400 and len(keys) > 20
    assert [[r[k] for k in keys] for r in job] == [[r[k] for k in keys] for r in collapse[:400]]


def test_the_reading_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "band_misses.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True, timeout=300
    )
    assert (tmp_path / "band_misses.md").read_text() == RESULTS.read_text()
    assert (tmp_path / "band_misses.json").read_text() == RESULTS.with_suffix(".json").read_text()


def test_docs_quote_the_reading() -> None:
    assert_docs_quote(RESULTS, ROOT / "docs" / "robustness.md", "band-misses", 10)
