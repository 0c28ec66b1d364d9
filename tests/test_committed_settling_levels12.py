"""The committed settling study (benchmarks/settling_levels12: the 12-arm study's task, levels 1-2, run
to 2000 steps with AER's defaults of 2026-12-04 written out, and no bonus) is what
its run directories say: every committed run is the shipped config's arm × seed and finished, and the
step-by-step reading is reproduced from the committed metrics and quoted in docs/ablations.md."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from committed_runs import assert_docs_quote, assert_runs_are_the_configs_arms

from entropyctl.config import parse_written_config
from entropyctl.controllers.parts import RelativeUpdate
from entropyctl.experiments.ablate import parse_arms

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "settling_levels12"
CONFIG = ROOT / "configs" / "settling_levels12.yaml"


def committed_runs() -> list[str]:
    """The runs the committed reading covers ("<arm slug>/seed<N>")."""
    return [run["run"] for run in json.loads((STUDY / "reading.json").read_text())["runs"]]


def test_committed_runs_are_the_shipped_configs_arms() -> None:
    base = yaml.safe_load(CONFIG.read_text())
    arms = base.pop("ablation")["arms"]
    by_arm: dict[str, list[int]] = {}
    for run in committed_runs():
        slug, seed = run.split("/seed")
        by_arm.setdefault(slug, []).append(int(seed))
    assert sorted(by_arm["aer"]) == sorted(by_arm["fixed_alpha=0"]) == [0, 1, 2]
    count = 0
    for arm in parse_arms(arms, where="ablation.arms"):
        if arm.slug in by_arm:
            count += assert_runs_are_the_configs_arms(
                base, [arm.label], sorted(by_arm[arm.slug]), STUDY, 2000
            )
    assert count == len(committed_runs())
    written = yaml.safe_load((STUDY / "aer" / "seed0" / "config.yaml").read_text())
    assert parse_written_config(written).controller.update == RelativeUpdate()  # type: ignore[union-attr]


def test_reading_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    copy = tmp_path / STUDY.name
    for run in committed_runs():
        shutil.copytree(STUDY / run, copy / run, ignore=shutil.ignore_patterns("checkpoints"))
    script = ROOT / "benchmarks" / "collapse_reading.py"
    subprocess.run([sys.executable, str(script), str(copy)], check=True, capture_output=True, timeout=300)
    assert (copy / "reading.md").read_text() == (STUDY / "reading.md").read_text()


def test_docs_quote_the_reading() -> None:
    rows = len(committed_runs())
    assert_docs_quote(
        STUDY / "reading.md", ROOT / "docs" / "ablations.md", "settling-levels12-table", rows, "| `"
    )
