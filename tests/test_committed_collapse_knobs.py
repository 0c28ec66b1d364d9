"""Item 3 of the robustness work on the collapse config itself (benchmarks/ablation_collapse_v5_knobs:
fixed α = 0.06, AER's step 0.015 and τ = 0.3 / 0.5 on `configs/ablation_collapse_v5.yaml`, seeds 0-2,
3000 steps, docs/ablations.md "Item 3 on the collapse config itself"): every committed run is the
config's arm × seed from the defaults' warm start and finished; the step-by-step reading, the paired
horizon reading and the range reading (with the v5 and fixed-α studies) are reproduced from the
committed metrics; the docs quote them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from committed_runs import assert_docs_quote, assert_runs_are_the_configs_arms

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
    for seed in (0, 1, 2):  # the same held-out score before RL as the defaults' v5 run of the seed
        before = json.loads((V5 / "aer" / f"seed{seed}" / "summary.json").read_text())["before"]
        for slug in ARMS.values():
            summary = json.loads((STUDY / slug / f"seed{seed}" / "summary.json").read_text())
            assert summary["before"] == before, (slug, seed)


def test_the_step_by_step_reading_is_reproduced(tmp_path: Path) -> None:
    copy = tmp_path / STUDY.name
    for run in STUDY.glob("*/seed*"):
        shutil.copytree(run, copy / run.parent.name / run.name, ignore=shutil.ignore_patterns("checkpoints"))
    script = ROOT / "benchmarks" / "collapse_reading.py"
    subprocess.run([sys.executable, str(script), str(copy)], check=True, capture_output=True, timeout=300)
    assert (copy / "reading.md").read_text() == (STUDY / "reading.md").read_text()


def test_the_horizon_reading_is_reproduced_and_quoted(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "horizon_reading.py"
    pooled = f"{V5.relative_to(ROOT)},{STUDY.relative_to(ROOT)}"
    out = tmp_path / "knobs_horizon.md"
    command = [sys.executable, str(script), *[pooled] * len(ARMS), "--arm", *ARMS.values()]
    command += ["--label", *ARMS, "--last", "3", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300, cwd=ROOT)
    results = ROOT / "benchmarks" / "results" / "collapse_v5_knobs_horizon.md"
    assert out.read_text() == results.read_text()
    reading = json.loads(out.with_suffix(".json").read_text())["studies"]
    assert all(s["seeds"] == [0, 1, 2] and s["last"]["steps"] == [2000, 2500, 3000] for s in reading.values())
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
