"""The third low-climb rule's reading (benchmarks/pooled_pairs.py, docs/robustness.md, "The low-climb
term, a third look"): it is reproduced from the committed runs, it reads every pair the rule names,
each pair is one run until the term can act, and docs/robustness.md quotes its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from committed_runs import (
    assert_collapse_reading_reproduced,
    assert_docs_quote,
    assert_numbers_equal,
    assert_one_warm_start,
    metrics_without_timings,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "pooled_pairs.py"
RESULTS = ROOT / "benchmarks" / "results"
#: the rule's pairs: task → seeds
PAIRS = {
    "levels 1–2 (600 steps)": list(range(10)),
    "level 2 (600 steps)": list(range(10, 20)),
    "collapse v5 (3000 steps)": [8, 9, 10],
}


def assert_reproduced(tmp_path: Path, name: str, *args: str) -> dict:
    """``pooled_pairs.py *args`` writes ``name``.md as committed and ``name``.json with the committed numbers
    (up to float rounding: a sum's last bit follows the numpy build); returns the committed reading."""
    command = [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    assert (tmp_path / f"{name}.md").read_text() == (RESULTS / f"{name}.md").read_text()
    written, committed = (json.loads((d / f"{name}.json").read_text()) for d in (tmp_path, RESULTS))
    assert_numbers_equal(written, committed, f"{name}.json")
    return committed


def test_the_reading_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    assert_reproduced(tmp_path, "pooled_pairs")


def test_every_pair_of_the_rule_is_read_and_is_one_run_until_the_term_can_act() -> None:
    reading = json.loads((RESULTS / "pooled_pairs.json").read_text())
    read = {task: [p["seed"] for p in reading["pairs"] if p["task"] == task] for task in PAIRS}
    assert read == PAIRS
    for pair in reading["pairs"]:
        assert pair["same_run_until"], (pair["task"], pair["seed"])
        # the term acts only below H*: the first differing α comes after a reading at or below it
        differs, crossing = pair["alpha_differs_from"], pair["first_reading_at_or_below_target"]
        assert crossing is not None and (differs is None or differs > crossing)
    assert reading["summary"]["pooled"]["pairs"] == sum(len(s) for s in PAIRS.values())
    # the amendment's second judgement: level 2 seeds 11-19 and collapse seeds 8-10
    assert reading["summary"]["pooled, unseen and non-overlapping"]["pairs"] == 12


def test_robustness_md_quotes_the_table() -> None:
    assert_docs_quote(RESULTS / "pooled_pairs.md", ROOT / "docs" / "robustness.md", "pooled-pairs-table", 4)


def test_the_600_step_tasks_are_prefixes_of_the_longer_runs() -> None:
    """The amendment's premise (docs/robustness.md, "A flaw in the rule above"): with the same seed and
    warm start a 600-step run is the first 600 steps of the longer task's run, for both arms: level 2
    seed 10 of the collapse pair of seed 10, levels 1-2 seeds 0-9 of the committed 2000-step runs."""
    term = "aer_update.linear=0.05_update.linear_on=low_climb"
    bench = ROOT / "benchmarks"
    level2 = {
        "aer": bench / "robustness" / "level2_twenty",
        term: bench / "robustness" / "level2_twenty_lowclimb",
    }
    for arm, folder in level2.items():
        short = metrics_without_timings(folder / arm / "seed10", 600)
        assert len(short) == 600 and short == metrics_without_timings(
            bench / "ablation_collapse_v5_third" / arm / "seed10", 600
        ), arm
    levels12 = {
        "aer": bench / "robustness" / "levels12_seeds",
        term: bench / "robustness" / "levels12_lowclimb",
    }
    for arm, folder in levels12.items():
        for seed in range(10):
            long_study = bench / ("settling_levels12" if seed < 5 else "settling_levels12_fresh")
            short = metrics_without_timings(folder / arm / f"seed{seed}", 600)
            assert len(short) == 600 and short == metrics_without_timings(
                long_study / arm / f"seed{seed}", 600
            ), (arm, seed)


#: the floor behind the gate (docs/robustness.md, "The floor behind a gate"): task → seeds
GATE_PAIRS = {
    "levels 1–2 (600 steps)": list(range(10)),
    "level 2 (600 steps)": list(range(11, 20)),
    "collapse v5 (3000 steps)": [8, 9, 10],
}


def test_the_gate_rules_reading_is_reproduced_reads_every_pair_and_is_quoted(tmp_path: Path) -> None:
    name = "pooled_pairs_floor_gate"
    committed = assert_reproduced(tmp_path, name, "--candidate", "floor_gate")
    read = {task: [p["seed"] for p in committed["pairs"] if p["task"] == task] for task in GATE_PAIRS}
    assert read == GATE_PAIRS
    assert committed["summary"]["pooled"]["pairs"] == 22
    for pair in committed["pairs"]:
        candidate, defaults = ROOT / pair["candidate"]["run"], ROOT / pair["defaults"]["run"]
        config = (candidate / "config.yaml").read_text()
        assert "apply: at_or_below_target" in config and "alpha_min: 0.0005" in config, candidate
        # the same warm start and seed: the first step's rollouts (reward, accuracy, entropy) are the same
        first = [
            (d / "metrics.csv").read_text().splitlines()[1].split(",")[:4] for d in (candidate, defaults)
        ]
        assert first[0] == first[1], (candidate, first)
    assert_docs_quote(
        RESULTS / f"{name}.md", ROOT / "docs" / "robustness.md", "pooled-pairs-floor-gate-table", 4
    )


def test_the_gate_rules_collapse_runs_are_read_and_quoted_and_share_the_defaults_warm_starts(
    tmp_path: Path,
) -> None:
    study = ROOT / "benchmarks" / "ablation_collapse_v5_gate"
    arm = "aer_update.alpha_min=5e-4_update.apply=at_or_below_target"
    assert sorted(p.name for p in (study / arm).glob("seed*")) == ["seed10", "seed8", "seed9"]
    for seed in (8, 9, 10):
        run = study / arm / f"seed{seed}"
        assert json.loads((run / "summary.json").read_text())["steps"] == 3000
        defaults = ROOT / "benchmarks" / "ablation_collapse_v5_third" / "aer" / f"seed{seed}"
        assert_one_warm_start([run, defaults], seed)
    assert_collapse_reading_reproduced(study, tmp_path)
    assert_docs_quote(
        study / "reading.md", ROOT / "docs" / "ablations.md", "collapse-v5-gate-table", 3, "| `"
    )
