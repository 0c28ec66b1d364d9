"""Item 3 of the robustness work on the collapse config itself (benchmarks/ablation_collapse_v5_knobs:
fixed α = 0.06, AER's step 0.015 and τ = 0.3 / 0.5 on `configs/ablation_collapse_v5.yaml`, seeds 0-2,
3000 steps, docs/ablations.md "Item 3 on the collapse config itself"): every committed run is the
config's arm × seed from the defaults' warm start and finished; the step-by-step reading, the paired
horizon reading and the range reading (with the v5 and fixed-α studies) are reproduced from the
committed metrics; the docs quote them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from committed_runs import (
    assert_collapse_reading_reproduced,
    assert_docs_quote,
    assert_last_three_horizon_reproduced,
    assert_runs_are_the_configs_arms,
    assert_same_warm_start,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ablation_collapse_v5.yaml"
V5 = ROOT / "benchmarks" / "ablation_collapse_v5"
FIXED = ROOT / "benchmarks" / "ablation_collapse_v5_fixed"
STUDY = ROOT / "benchmarks" / "ablation_collapse_v5_knobs"
#: label in the horizon table -> arm slug
ARMS = {
    "fixed 0.06": "fixed_alpha=0.06",
    "step 0.015": "aer_update.step=0.015",
    "tau 0.3": "aer_anchor.tau=0.3",
    "tau 0.5": "aer_anchor.tau=0.5",
}
LABELS = ["fixed:alpha=0.06", "aer:update.step=0.015", "aer:anchor.tau=0.3", "aer:anchor.tau=0.5"]


def test_the_runs_are_the_configs_arms_from_the_defaults_warm_start() -> None:
    base = yaml.safe_load(CONFIG.read_text())
    base.pop("ablation")
    assert assert_runs_are_the_configs_arms(base, LABELS, [0, 1, 2], STUDY, 3000) == 12
    assert len(list(STUDY.glob("*/seed*"))) == 12
    assert_same_warm_start(V5 / "aer", STUDY, ARMS.values(), (0, 1, 2))


def test_the_step_by_step_reading_is_reproduced(tmp_path: Path) -> None:
    assert_collapse_reading_reproduced(STUDY, tmp_path)


def test_the_horizon_reading_is_reproduced_and_quoted(tmp_path: Path) -> None:
    results = ROOT / "benchmarks" / "results" / "collapse_v5_knobs_horizon.md"
    assert_last_three_horizon_reproduced([V5, STUDY], ARMS, results, tmp_path)
    assert_docs_quote(results, ROOT / "docs" / "ablations.md", "collapse-v5-knobs", 28, "| ")


def test_the_range_reading_is_reproduced_and_quoted(tmp_path: Path) -> None:
    """The collapse config's knob ranges, read over the three studies that ran its arms (seeds 0-2)."""
    script = ROOT / "benchmarks" / "robustness_reading.py"
    folders = ",".join(str(p.relative_to(ROOT)) for p in (V5, FIXED, STUDY))
    out = tmp_path / "robustness"
    command = [sys.executable, str(script), f"collapse_v5={folders}", "--seeds", "0,1,2", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300, cwd=ROOT)
    committed = STUDY / "robustness"
    assert (out / "reading.md").read_text() == (committed / "reading.md").read_text()
    assert (out / "reading.json").read_text() == (committed / "reading.json").read_text()
    ranges = json.loads((committed / "reading.json").read_text())["ranges"]
    assert ranges["fixed α"]["collapse_v5"]["values"] == [0.0, 0.003, 0.01, 0.03, 0.06]
    assert ranges["aer step κ"]["collapse_v5"]["values"] == [0.015, 0.05, 0.15]
    assert ranges["aer τ"]["collapse_v5"]["values"] == [0.3, 0.4, 0.5]
    assert_docs_quote(committed / "reading.md", ROOT / "docs" / "ablations.md", "collapse-v5-ranges", 4, "| ")
