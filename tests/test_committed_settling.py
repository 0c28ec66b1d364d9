"""benchmarks/results/settling.md (how long AER's defaults take to settle on each shipped task) is
reproduced from the committed runs, and docs/robustness.md quotes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from committed_runs import assert_docs_quote

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
    assert_docs_quote(RESULTS, ROOT / "docs" / "robustness.md", "settling-table", 17)
