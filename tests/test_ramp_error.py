"""benchmarks/ramp_error.py (docs/controllers.md, "Why no second integrator"): the committed table is
what the script reads off the committed 2000-step runs, and its two columns agree where they should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def test_the_ramp_table_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "ramp_error.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "ramp_error.md").read_text() == (RESULTS / "ramp_error.md").read_text()
    reading = json.loads((RESULTS / "ramp_error.json").read_text())
    assert len(reading) == 3 and all(len(ws) == 9 for ws in reading.values())
    # the identity the reading rests on: where the integral moves α, its rise per step over κ is the
    # mean error (a window that starts or ends on a proportional kick differs by that kick's share)
    close = [abs(w["error"] - w["rise_over_step"]) < 0.1 for ws in reading.values() for w in ws]
    assert sum(close) >= 0.8 * len(close)
    # and each run has a stretch of at least two windows at or past the band's edge
    for windows in reading.values():
        errors = [w["error"] for w in windows]
        assert any(a >= 0.16 and b >= 0.16 for a, b in zip(errors, errors[1:], strict=False))
