"""The committed collapse study v4 (benchmarks/ablation_collapse_v4: two candidates for AER's defaults
on the collapse task, 3000 steps) is what its run directories say: every run is the shipped config's
arm × seed and finished; the step-by-step reading is reproduced from the committed metrics; the docs
quote its rows."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from committed_runs import assert_docs_quote, assert_runs_are_the_configs_arms

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "ablation_collapse_v4"
CONFIG = ROOT / "configs" / "ablation_collapse_v4.yaml"


def test_committed_runs_are_the_shipped_configs_arms() -> None:
    base = yaml.safe_load(CONFIG.read_text())
    ablation = base.pop("ablation")
    seeds = list(range(ablation["seeds"]))  # 2: seeds 0-1 (the config says why)
    count = assert_runs_are_the_configs_arms(base, ablation["arms"], seeds, STUDY, 3000)
    assert count == len(seeds) * len(ablation["arms"]) >= 4


def test_reading_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    copy = tmp_path / STUDY.name
    shutil.copytree(STUDY, copy, ignore=shutil.ignore_patterns("reading.*", "*.png"))
    script = ROOT / "benchmarks" / "collapse_reading.py"
    subprocess.run([sys.executable, str(script), str(copy)], check=True, capture_output=True, timeout=300)
    assert (copy / "reading.md").read_text() == (STUDY / "reading.md").read_text()


def test_docs_quote_the_reading() -> None:
    assert_docs_quote(STUDY / "reading.md", ROOT / "docs" / "ablations.md", "collapse-v4-table", 4, "| `")
