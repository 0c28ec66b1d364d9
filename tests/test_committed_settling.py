"""benchmarks/results/settling.md (how long AER's defaults take to settle on each shipped task) is
reproduced from the committed runs, and docs/robustness.md quotes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from committed_runs import assert_docs_quote, metrics_without_timings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "settling.md"


def test_the_settling_table_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "settling.py"
    subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True, timeout=300
    )
    assert (tmp_path / "settling.md").read_text() == RESULTS.read_text()
    assert (tmp_path / "settling.json").read_text() == (RESULTS.with_suffix(".json")).read_text()


def test_docs_quote_the_settling_table() -> None:
    assert_docs_quote(RESULTS, ROOT / "docs" / "robustness.md", "settling-table", 19)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_main_jobs_runs_are_the_first_400_steps_of_level_2s(seed: int) -> None:
    """The premise of the settling table's main job over twenty seeds: the main job's own committed
    run of a seed is, row for row (timings aside), the first 400 steps of level 2's run of that seed;
    the rows agreeing on every column is what makes the runs one run."""
    main_job = ROOT / "benchmarks" / "default_job_2026-12-03" / f"s{seed}"
    level2 = ROOT / "benchmarks" / "robustness" / "level2" / "aer" / f"seed{seed}"
    rows = metrics_without_timings(main_job)
    assert len(rows) == 400
    assert rows == metrics_without_timings(level2, 400)
    assert len(metrics_without_timings(level2)) == 600
