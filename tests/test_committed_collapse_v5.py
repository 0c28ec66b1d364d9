"""The committed collapse study v5 (benchmarks/ablation_collapse_v5: AER's step 0.15, the lead of the
ten-seed study, and the opt-in climb boost, plain and gated, the floor 5e-4, the rearm (to α_0 and to 5e-4), the uniform allocation and half the proportional gain beside the defaults and no bonus, on one warm start, 3000 steps) is what its run
directories say: every committed run is the shipped config's arm × seed and finished, every arm
has three seeds; the step-by-step reading is reproduced from the committed metrics; the docs quote
its rows."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from committed_runs import (
    assert_collapse_reading_reproduced,
    assert_docs_quote,
    assert_last_three_horizon_reproduced,
    assert_one_warm_start,
    assert_runs_are_the_configs_arms,
    assert_same_warm_start,
)

from entropyctl.config import parse_written_config
from entropyctl.controllers.parts import RelativeUpdate
from entropyctl.experiments.ablate import parse_arms

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "ablation_collapse_v5"
CONFIG = ROOT / "configs" / "ablation_collapse_v5.yaml"


def committed_runs() -> list[str]:
    """The runs the committed reading covers ("<arm slug>/seed<N>")."""
    return [run["run"] for run in json.loads((STUDY / "reading.json").read_text())["runs"]]


def test_committed_runs_are_the_shipped_configs_arms() -> None:
    base = yaml.safe_load(CONFIG.read_text())
    arms = base.pop("ablation")["arms"]
    runs = committed_runs()
    by_arm: dict[str, list[int]] = {}
    for run in runs:
        slug, seed = run.split("/seed")
        by_arm.setdefault(slug, []).append(int(seed))
    slugs = (
        "aer_update.step=0.15",
        "aer",
        "fixed_alpha=0",
        "aer_update.climb_boost=10_update.climb_from=0.2",
        "aer_update.climb_boost=10_update.climb_from=0.2_update.climb_after=25",
        "aer_update.alpha_min=5.0e-4",
        "aer_update.rearm_at_target=true",
        "aer_allocation.rule=uniform",
        "aer_update.rearm_at_target=true_update.rearm_alpha=5e-4",
        "aer_update.proportional=1",
        "aer_update.conditional=true",
        "aer_update.linear=0.05_update.linear_on=climb",
        "aer_update.linear=0.05_update.linear_on=low_climb",
    )
    assert all(sorted(by_arm[slug]) == [0, 1, 2] for slug in slugs)
    count = 0
    for arm in parse_arms(arms, where="ablation.arms"):
        if arm.slug in by_arm:
            count += assert_runs_are_the_configs_arms(
                base, [arm.label], sorted(by_arm[arm.slug]), STUDY, 3000
            )
    assert count == len(runs)

    # the `aer` arm is today's defaults (written out in the config); the others differ in the named
    # fields only (a field a run's config.yaml lacks reads as it ran: entropyctl.config.ABSENT_MEANS)
    def update_of(slug: str) -> RelativeUpdate:
        written = yaml.safe_load((STUDY / slug / "seed0" / "config.yaml").read_text())
        update = parse_written_config(written).controller.update  # type: ignore[union-attr]
        assert isinstance(update, RelativeUpdate)
        return update

    assert update_of("aer") == RelativeUpdate()
    assert update_of("aer_update.step=0.15") == RelativeUpdate(step=0.15)
    assert update_of(slugs[3]) == RelativeUpdate(climb_boost=10.0, climb_from=0.2)
    assert update_of(slugs[4]) == RelativeUpdate(climb_boost=10.0, climb_from=0.2, climb_after=25)
    assert update_of(slugs[5]) == RelativeUpdate(alpha_min=5e-4)
    assert update_of(slugs[6]) == RelativeUpdate(rearm_at_target=True)
    assert update_of(slugs[7]) == RelativeUpdate()  # the defaults' rule; only the allocation differs
    written = yaml.safe_load((STUDY / slugs[7] / "seed0" / "config.yaml").read_text())
    assert parse_written_config(written).controller.allocation.rule == "uniform"  # type: ignore[union-attr]
    assert update_of(slugs[8]) == RelativeUpdate(rearm_at_target=True, rearm_alpha=5e-4)
    assert update_of(slugs[9]) == RelativeUpdate(proportional=1.0)
    assert update_of(slugs[10]) == RelativeUpdate(conditional=True)
    assert update_of(slugs[11]) == RelativeUpdate(linear=0.05, linear_on="climb")
    assert update_of(slugs[12]) == RelativeUpdate(linear=0.05, linear_on="low_climb")


def test_reading_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    copy = tmp_path / STUDY.name
    for run in committed_runs():  # only the committed runs (a local checkout may hold running ones)
        shutil.copytree(STUDY / run, copy / run, ignore=shutil.ignore_patterns("checkpoints"))
    script = ROOT / "benchmarks" / "collapse_reading.py"
    subprocess.run([sys.executable, str(script), str(copy)], check=True, capture_output=True, timeout=300)
    assert (copy / "reading.md").read_text() == (STUDY / "reading.md").read_text()


def test_docs_quote_the_reading() -> None:
    assert_docs_quote(STUDY / "reading.md", ROOT / "docs" / "ablations.md", "collapse-v5-table", 24, "| `")
    # the per-arm and paired tables: every arm, and every arm but the base paired with it
    assert_docs_quote(
        STUDY / "reading.md", ROOT / "docs" / "ablations.md", "collapse-v5-arms", 12 + 11, "| `"
    )


#: benchmarks/results/collapse_v5_horizon.md: every candidate against the defaults at every evaluation
HORIZON_ARMS = {
    "step_0.15": "aer_update.step=0.15",
    "climb_boost": "aer_update.climb_boost=10_update.climb_from=0.2",
    "gated_boost": "aer_update.climb_boost=10_update.climb_from=0.2_update.climb_after=25",
    "floor_5e-4": "aer_update.alpha_min=5.0e-4",
    "rearm": "aer_update.rearm_at_target=true",
    "rearm_5e-4": "aer_update.rearm_at_target=true_update.rearm_alpha=5e-4",
    "uniform_allocation": "aer_allocation.rule=uniform",
    "proportional_1": "aer_update.proportional=1",
    "no_bonus": "fixed_alpha=0",
}


def test_horizon_reading_is_reproduced(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "horizon_reading.py"
    study = str(STUDY.relative_to(ROOT))
    out = tmp_path / "horizon.md"
    command = [sys.executable, str(script), *[study] * len(HORIZON_ARMS), "--arm", *HORIZON_ARMS.values()]
    command += ["--label", *HORIZON_ARMS, "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300, cwd=ROOT)
    committed = ROOT / "benchmarks" / "results" / "collapse_v5_horizon.md"
    assert out.read_text() == committed.read_text()
    reading = json.loads(out.with_suffix(".json").read_text())["studies"]
    # six evaluations (steps 500 ... 3000) over the three seeds of every arm
    assert all([row["step"] for row in s["rows"]] == list(range(500, 3001, 500)) for s in reading.values())
    assert all(s["seeds"] == [0, 1, 2] for s in reading.values())


#: seeds 3-4 of the defaults and the floor (2026-12-05: "The floor to 2000 steps" in docs/ablations.md)
#: and of the linear term on the climb below alpha_0 (2026-12-06, read after its verdict)
SEEDS_STUDY = ROOT / "benchmarks" / "ablation_collapse_v5_seeds"
FLOOR = "aer_update.alpha_min=5.0e-4"
LOW_CLIMB = "aer_update.linear=0.05_update.linear_on=low_climb"


def assert_the_studys_runs_are_the_configs_arms(
    study: Path, slugs: tuple[str, ...], seeds: list[int]
) -> None:
    """Every run of ``study`` is one of the config's arms ``slugs`` at one of ``seeds``, 3000 steps, and
    every such arm × seed is there."""
    base = yaml.safe_load(CONFIG.read_text())
    labels = {arm.slug: arm.label for arm in parse_arms(base.pop("ablation")["arms"], where="ablation.arms")}
    count = sum(assert_runs_are_the_configs_arms(base, [labels[slug]], seeds, study, 3000) for slug in slugs)
    assert count == len(slugs) * len(seeds) == len(list(study.glob("*/seed*")))


def test_the_extra_seeds_are_the_configs_arms() -> None:
    assert_the_studys_runs_are_the_configs_arms(SEEDS_STUDY, ("aer", FLOOR, LOW_CLIMB), [3, 4])


def test_the_extra_seeds_reading_is_reproduced(tmp_path: Path) -> None:
    assert_collapse_reading_reproduced(SEEDS_STUDY, tmp_path)


#: the low-climb rules' collapse pairs, the defaults and the term on seeds no earlier run used
#: (2026-12-06, docs/robustness.md): (folder, seeds, the docs marker quoting its reading) — seeds 5-7 for
#: "The low-climb term as the default, judged on fresh seeds", 8-10 for "The low-climb term, a third look"
PAIRED_STUDIES = [
    (ROOT / "benchmarks" / "ablation_collapse_v5_fresh", [5, 6, 7], "collapse-v5-fresh-table"),
    (ROOT / "benchmarks" / "ablation_collapse_v5_third", [8, 9, 10], "collapse-v5-third-table"),
]
PAIRED_IDS = [study.name for study, _, _ in PAIRED_STUDIES]


@pytest.mark.parametrize(("study", "seeds", "marker"), PAIRED_STUDIES, ids=PAIRED_IDS)
def test_the_paired_seeds_are_the_configs_arms_on_one_warm_start(
    study: Path, seeds: list[int], marker: str
) -> None:
    assert_the_studys_runs_are_the_configs_arms(study, ("aer", LOW_CLIMB), seeds)
    for seed in seeds:  # both arms of a seed start from one warm start and evaluation draw
        assert_one_warm_start([study / slug / f"seed{seed}" for slug in ("aer", LOW_CLIMB)], seed)


@pytest.mark.parametrize(("study", "seeds", "marker"), PAIRED_STUDIES, ids=PAIRED_IDS)
def test_the_paired_seeds_reading_is_reproduced_and_quoted(
    tmp_path: Path, study: Path, seeds: list[int], marker: str
) -> None:
    assert_collapse_reading_reproduced(study, tmp_path)
    # every run (two arms × seeds) and the term's paired-difference row
    assert_docs_quote(study / "reading.md", ROOT / "docs" / "ablations.md", marker, 2 * len(seeds) + 1, "| `")


#: more seeds of the defaults alone (2026-12-06, docs/robustness.md "How long the defaults take to
#: settle"), from the same warm start as the defaults' v5 runs
MORE_STUDY = ROOT / "benchmarks" / "ablation_collapse_v5_more"


def test_the_defaults_more_seeds_are_the_configs_arm_from_the_v5_warm_start(tmp_path: Path) -> None:
    assert_the_studys_runs_are_the_configs_arms(MORE_STUDY, ("aer",), [11, 12, 13])
    weights = {
        json.loads((run / "summary.json").read_text())["initial_weights_sha256"]
        for run in [*MORE_STUDY.glob("aer/seed*"), *STUDY.glob("aer/seed*")]
    }
    assert len(weights) == 1
    assert_collapse_reading_reproduced(MORE_STUDY, tmp_path)


def test_floor_horizon_is_reproduced(tmp_path: Path) -> None:
    """benchmarks/results/floor_horizon.md: the floor against the defaults at every evaluation, on
    levels 1-2 (2000 steps, seeds 0-4) and on level 2 (collapse v5 with its extra seeds, 3000 steps)."""
    script = ROOT / "benchmarks" / "horizon_reading.py"
    out = tmp_path / "floor_horizon.md"
    pooled = f"{STUDY.relative_to(ROOT)},{SEEDS_STUDY.relative_to(ROOT)}"
    command = [sys.executable, str(script), "benchmarks/settling_levels12", pooled]
    command += ["--arm", "aer_update.alpha_min=5e-4", FLOOR, "--label", "levels 1–2", "level 2 (collapse v5)"]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True, timeout=300, cwd=ROOT)
    assert out.read_text() == (ROOT / "benchmarks" / "results" / "floor_horizon.md").read_text()
    reading = json.loads(out.with_suffix(".json").read_text())["studies"]
    assert [s["seeds"] for s in reading.values()] == [[0, 1, 2, 3, 4]] * 2
    results = ROOT / "benchmarks" / "results" / "floor_horizon.md"
    assert_docs_quote(results, ROOT / "docs" / "ablations.md", "floor-horizon", 10, "| level")


#: fixed α 0.003, 0.01 and 0.03 on the collapse task (2026-12-05, "Fixed α on the collapse task" in
#: docs/ablations.md), seeds 0-2 of the same config and warm start as the defaults' v5 runs
FIXED_STUDY = ROOT / "benchmarks" / "ablation_collapse_v5_fixed"
FIXED_ARMS = {
    "fixed 0.003": "fixed_alpha=0.003",
    "fixed 0.01": "fixed_alpha=0.01",
    "fixed 0.03": "fixed_alpha=0.03",
}


def test_the_fixed_runs_are_the_configs_arms_from_the_defaults_warm_start() -> None:
    base = yaml.safe_load(CONFIG.read_text())
    base.pop("ablation")
    labels = [slug.replace("fixed_alpha=", "fixed:alpha=") for slug in FIXED_ARMS.values()]
    assert assert_runs_are_the_configs_arms(base, labels, [0, 1, 2], FIXED_STUDY, 3000) == 9
    assert len(list(FIXED_STUDY.glob("*/seed*"))) == 9
    assert_same_warm_start(STUDY / "aer", FIXED_STUDY, FIXED_ARMS.values(), (0, 1, 2))


def test_the_fixed_runs_readings_are_reproduced(tmp_path: Path) -> None:
    assert_collapse_reading_reproduced(FIXED_STUDY, tmp_path)
    results = ROOT / "benchmarks" / "results" / "collapse_v5_fixed_horizon.md"
    assert_last_three_horizon_reproduced([STUDY, FIXED_STUDY], FIXED_ARMS, results, tmp_path)
    assert_docs_quote(results, ROOT / "docs" / "ablations.md", "collapse-v5-fixed", 21, "| fixed")
