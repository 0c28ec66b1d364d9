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

import pytest
import yaml
from committed_runs import assert_docs_quote, assert_runs_are_the_configs_arms

from entropyctl.config import parse_written_config
from entropyctl.controllers.parts import RelativeUpdate
from entropyctl.experiments.ablate import parse_arms

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "settling_levels12"
CONFIG = ROOT / "configs" / "settling_levels12.yaml"
#: the floor one decade below alpha_0, run on both tasks as a diagnostic (2026-12-05)
FLOOR = "aer_update.alpha_min=5e-4"
#: conditional integration, read alongside its level-2 and collapse runs (2026-12-06), seeds 0-4
CONDITIONAL = "aer_update.conditional=true"
#: the linear term on the climb below alpha_0, read alongside its level-2 and collapse runs (2026-12-06)
LOW_CLIMB = "aer_update.linear=0.05_update.linear_on=low_climb"
#: the studies of this config: (folder, ``data.levels`` override or None, the arm slugs run, the docs marker)
STUDIES = {
    "levels12": (
        STUDY,
        None,
        ["aer", "fixed_alpha=0", FLOOR, CONDITIONAL, LOW_CLIMB],
        "settling-levels12-table",
    ),
    # 2026-12-05: the same config on level 2 only (``--set "data.levels=[2]"``), the defaults and the floor
    "level2": (ROOT / "benchmarks" / "settling_level2", [2], ["aer", FLOOR], "settling-level2-table"),
    # 2026-12-06: seeds 5-9 of the defaults and the low-climb term, the second low-climb rule's leg
    "levels12_fresh": (
        ROOT / "benchmarks" / "settling_levels12_fresh",
        None,
        ["aer", LOW_CLIMB],
        "settling-levels12-fresh-table",
    ),
}
#: the seeds each study ran for every arm (the exceptions on levels 1-2 are named in the test below)
SEEDS = {"levels12": [0, 1, 2], "level2": [0, 1, 2], "levels12_fresh": [5, 6, 7, 8, 9]}


def committed_runs(study: Path = STUDY) -> list[str]:
    """The runs the committed reading covers ("<arm slug>/seed<N>")."""
    return [run["run"] for run in json.loads((study / "reading.json").read_text())["runs"]]


@pytest.mark.parametrize("name", list(STUDIES))
def test_committed_runs_are_the_shipped_configs_arms(name: str) -> None:
    study, levels, slugs, _ = STUDIES[name]
    base = yaml.safe_load(CONFIG.read_text())
    arms = base.pop("ablation")["arms"]
    if levels is not None:
        base["data"]["levels"] = levels
    by_arm: dict[str, list[int]] = {}
    for run in committed_runs(study):
        slug, seed = run.split("/seed")
        by_arm.setdefault(slug, []).append(int(seed))
    assert sorted(by_arm) == sorted(slugs)
    # seeds 0-2 of every arm (5-9 in the fresh study); on levels 1-2 seeds 3-4 of the defaults and the
    # floor as well (2026-12-05), and seeds 0-4 of conditional integration and of the low-climb term
    for slug, seeds in by_arm.items():
        more = name == "levels12" and slug in ("aer", FLOOR, CONDITIONAL, LOW_CLIMB)
        assert sorted(seeds) == ([0, 1, 2, 3, 4] if more else SEEDS[name]), slug
    count = 0
    for arm in parse_arms(arms, where="ablation.arms"):
        if arm.slug in by_arm:
            count += assert_runs_are_the_configs_arms(
                base, [arm.label], sorted(by_arm[arm.slug]), study, 2000
            )
    assert count == len(committed_runs(study))
    written = yaml.safe_load((study / "aer" / f"seed{SEEDS[name][0]}" / "config.yaml").read_text())
    assert parse_written_config(written).controller.update == RelativeUpdate()  # type: ignore[union-attr]


@pytest.mark.parametrize("name", list(STUDIES))
def test_reading_is_reproduced_from_the_committed_runs(name: str, tmp_path: Path) -> None:
    study = STUDIES[name][0]
    copy = tmp_path / study.name
    for run in committed_runs(study):
        shutil.copytree(study / run, copy / run, ignore=shutil.ignore_patterns("checkpoints"))
    script = ROOT / "benchmarks" / "collapse_reading.py"
    subprocess.run([sys.executable, str(script), str(copy)], check=True, capture_output=True, timeout=300)
    assert (copy / "reading.md").read_text() == (study / "reading.md").read_text()


@pytest.mark.parametrize("name", list(STUDIES))
def test_docs_quote_the_reading(name: str) -> None:
    study, _, _, marker = STUDIES[name]
    rows = len(committed_runs(study))
    assert_docs_quote(study / "reading.md", ROOT / "docs" / "ablations.md", marker, rows, "| `")
