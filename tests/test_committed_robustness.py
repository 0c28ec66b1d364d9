"""The committed robustness sweep (fixed α over 0 and 0.001–0.1 against aer's step over 10× and τ 0.3–0.5,
plus two candidate defaults; 3 seeds × 600 steps on two tasks: benchmarks/robustness/levels12, the
12-arm study's task, and benchmarks/robustness/level2, its level-2 prompts only) is what its run
directories say: every run is the shipped config's arm × seed, finished; the reading is reproduced
from the committed metrics and summaries; docs/ablations.md quotes its rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from committed_runs import (
    assert_docs_quote,
    assert_one_warm_start,
    assert_reading_reproduced,
    assert_runs_are_the_configs_arms,
    assert_same_warm_start,
    quoted_table,
)

from entropyctl.experiments.ablate import parse_arm

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "benchmarks" / "robustness"
TASK = SWEEP / "levels12"
#: the second task: the shipped config with ``--set "data.levels=[2]"`` (its header gives the command)
LEVEL2 = SWEEP / "level2"
CONFIG = ROOT / "configs" / "robustness.yaml"


def sweep_base(levels: list[int] | None = None) -> dict[str, Any]:
    """configs/robustness.yaml without its ablation section (levels 1-2), or on ``levels``."""
    base: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    base.pop("ablation")
    if levels is not None:
        base["data"]["levels"] = levels
    return base


def level2_base() -> dict[str, Any]:
    """The sweep's second task: level 2 only."""
    return sweep_base([2])


def assert_seed_spread_reproduced(
    folders: list[Path], arms: list[str], extra: list[str], committed: Path, marker: str, out: Path
) -> dict[str, Any]:
    """benchmarks/seed_spread.py over ``folders`` writes the committed spread of ``committed``, and
    docs/ablations.md quotes its table between the ``marker`` comments. Returns the committed spread."""
    script = ROOT / "benchmarks" / "seed_spread.py"
    command = [sys.executable, str(script), *map(str, folders), "--arms", *arms, *extra, "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    fresh = json.loads((out / "seed_spread.json").read_text())
    kept: dict[str, Any] = json.loads((committed / "seed_spread.json").read_text())
    assert fresh["arms"] == kept["arms"] and fresh["difference"] == kept["difference"]
    assert fresh["paired_difference"] == kept["paired_difference"]
    # over the same seeds the mean of the paired differences is the difference of the means
    if all(arm["seeds"] == kept["paired_difference"]["seeds"] for arm in kept["arms"].values()):
        for key, paired in kept["paired_difference"].items():
            if key != "seeds" and paired is not None:
                assert paired["delta"] == pytest.approx(kept["difference"][key]["delta"], abs=1e-12)
    assert (out / "seed_spread.md").read_text() == (committed / "seed_spread.md").read_text()
    assert (
        quoted_table(ROOT / "docs" / "ablations.md", marker)
        == (committed / "seed_spread.md").read_text().splitlines()
    )
    return kept


@pytest.mark.parametrize(("task", "levels"), [(TASK, [1, 2]), (LEVEL2, [2])], ids=["levels12", "level2"])
def test_committed_runs_are_the_shipped_configs_arms(task: Path, levels: list[int]) -> None:
    base = yaml.safe_load(CONFIG.read_text())
    arms = base.pop("ablation")["arms"]
    assert base["data"]["levels"] == [1, 2]
    base["data"]["levels"] = levels
    assert assert_runs_are_the_configs_arms(base, arms, [0, 1, 2], task, 600) == 3 * len(arms) >= 36


def test_reading_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "robustness_reading.py"
    reading = assert_reading_reproduced(script, [str(TASK), str(LEVEL2)], SWEEP, tmp_path)
    assert list(reading["tasks"]) == ["levels12", "level2"]
    # the figure is drawn from the same reading (pixels are not compared: fonts differ across machines)
    assert (tmp_path / "robustness.png").stat().st_size > 20_000 and (SWEEP / "robustness.png").exists()


def test_docs_quote_the_reading() -> None:
    assert_docs_quote(SWEEP / "reading.md", ROOT / "docs" / "ablations.md", "robustness-table", 10)


#: seeds 3-9 of two level-2 arms, run to see how far three seeds are from the answer
SEEDS = SWEEP / "level2_seeds"


def test_the_extra_seeds_are_the_configs_arms_and_their_spread_is_reproduced(tmp_path: Path) -> None:
    base = level2_base()
    arms = ["aer", "aer:update.step=0.15"]
    assert assert_runs_are_the_configs_arms(base, arms, list(range(3, 10)), SEEDS, 600) == 14
    kept = assert_seed_spread_reproduced(
        [LEVEL2, SEEDS], ["aer", "aer_update.step=0.15"], [], SEEDS, "seed-spread", tmp_path
    )
    assert [len(arm["seeds"]) for arm in kept["arms"].values()] == [10, 10]


#: arms run to ten seeds on level 2, each read against the defaults' ten seeds: (arm, the seeds in
#: level2_seeds (the rest are the sweep's seeds 0-2 in level2), folder of the spread, docs marker,
#: seed_spread.py's extra arguments)
TEN_SEED_CANDIDATES = [
    # the opt-in climb boost (2026-12-04), seeds 0-9 all in level2_seeds
    (
        "aer:update.climb_boost=10,update.climb_from=0.2",
        list(range(10)),
        "climb_boost",
        "seed-spread-boost",
        [],
    ),
    # the floor alpha_min 5e-4 (2026-12-04), seeds 3-9; seeds 0-2 are the sweep's candidate arm
    ("aer:update.alpha_min=5.0e-4", list(range(3, 10)), "floor", "seed-spread-floor", []),
    # the rearm at the target (2026-12-04), seeds 0-9 all in level2_seeds
    ("aer:update.rearm_at_target=true", list(range(10)), "rearm", "seed-spread-rearm", []),
    # the rearm to one decade below alpha_0 (2026-12-05), seeds 0-9 all in level2_seeds
    (
        "aer:update.rearm_at_target=true,update.rearm_alpha=5e-4",
        list(range(10)),
        "rearm_5e-4",
        "seed-spread-rearm-5e-4",
        [],
    ),
    # the sweep's best fixed α, the yardstick (2026-12-05), seeds 3-9; in band against AER's 0.4·H0
    ("fixed:alpha=0.01", list(range(3, 10)), "fixed", "seed-spread-fixed", ["--band-tau", "0.4"]),
    # the fixed arm's bonus over the first quarter only (2026-12-05), seeds 0-9 all in level2_seeds
    ("aer:alpha_0=0.01,anchor.steps=150", list(range(10)), "early", "seed-spread-early", []),
    # no bonus at all, against AER's band (2026-12-05), seeds 3-9; seeds 0-2 are the sweep's arm
    ("fixed:alpha=0", list(range(3, 10)), "no_bonus", "seed-spread-no-bonus", ["--band-tau", "0.4"]),
]


@pytest.mark.parametrize(
    ("arm", "seeds", "folder", "marker", "extra"),
    TEN_SEED_CANDIDATES,
    ids=[c[2] for c in TEN_SEED_CANDIDATES],
)
def test_ten_seed_candidates_are_the_configs_arm_and_their_spread_is_reproduced(
    tmp_path: Path, arm: str, seeds: list[int], folder: str, marker: str, extra: list[str]
) -> None:
    base = level2_base()
    assert assert_runs_are_the_configs_arms(base, [arm], seeds, SEEDS, 600) == len(seeds)
    slug = parse_arm(arm).slug
    kept = assert_seed_spread_reproduced(
        [LEVEL2, SEEDS], ["aer", slug], extra, SEEDS / folder, marker, tmp_path
    )
    assert [len(arm["seeds"]) for arm in kept["arms"].values()] == [10, 10]


#: conditional integration on level 2 (2026-12-06), seeds 0-9 of two arms in their own folder:
#: (arm, folder of its spread against the defaults' ten, docs marker)
CONDITIONAL = SWEEP / "level2_conditional"
CONDITIONAL_ARMS = [
    ("aer:update.conditional=true,update.step=0.15", "conditional_step", "seed-spread-conditional-step"),
    ("aer:update.conditional=true", "conditional", "seed-spread-conditional"),
]


#: the linear term beside the log step on level 2 (2026-12-06), seeds 0-9 in their own folder
LINEAR = SWEEP / "level2_linear"
LINEAR_ARMS = [
    ("aer:update.linear=0.05", "linear", "seed-spread-linear-term"),
    ("aer:update.linear=0.05,update.linear_on=climb", "linear_climb", "seed-spread-linear-term-climb"),
    (
        "aer:update.linear=0.05,update.linear_on=low_climb",
        "linear_low_climb",
        "seed-spread-linear-term-low-climb",
    ),
]
#: the candidates' own ten-seed folders on level 2: (folder, its arms)
CANDIDATE_STUDIES = [(CONDITIONAL, CONDITIONAL_ARMS), (LINEAR, LINEAR_ARMS)]


@pytest.mark.parametrize(("study", "arms"), CANDIDATE_STUDIES, ids=[s.name for s, _ in CANDIDATE_STUDIES])
def test_the_candidate_runs_are_the_configs_arms_from_the_defaults_warm_start(
    study: Path, arms: list[tuple[str, str, str]]
) -> None:
    labels = [arm for arm, *_ in arms]
    runs = assert_runs_are_the_configs_arms(level2_base(), labels, list(range(10)), study, 600)
    assert runs == 10 * len(labels)
    for seed in range(10):  # the defaults' run of each seed: the sweep's (0-2) or the seed study's (3-9)
        defaults = seed_run([LEVEL2, SEEDS], "aer", seed)
        assert_one_warm_start([defaults, *(study / parse_arm(a).slug / f"seed{seed}" for a in labels)], seed)


CANDIDATE_SPREADS = [(study, *arm) for study, arms in CANDIDATE_STUDIES for arm in arms]


@pytest.mark.parametrize(
    ("study", "arm", "folder", "marker"), CANDIDATE_SPREADS, ids=[c[2] for c in CANDIDATE_SPREADS]
)
def test_the_candidate_spreads_are_reproduced(
    tmp_path: Path, study: Path, arm: str, folder: str, marker: str
) -> None:
    kept = assert_seed_spread_reproduced(
        [LEVEL2, SEEDS, study], ["aer", parse_arm(arm).slug], [], study / folder, marker, tmp_path
    )
    assert [len(a["seeds"]) for a in kept["arms"].values()] == [10, 10]


def test_the_skip_runs_are_the_configs_fixed_arm_with_the_skip_on() -> None:
    """benchmarks/robustness/level2_skip: fixed α = 0.1 on level 2 with algorithm.skip_no_signal, 3 seeds."""
    base = level2_base()
    base.setdefault("algorithm", {})["skip_no_signal"] = True
    study = ROOT / "benchmarks" / "robustness" / "level2_skip"
    assert assert_runs_are_the_configs_arms(base, ["fixed:alpha=0.1"], [0, 1, 2], study, 600) == 3


#: the fixed α yardstick on levels 1-2 from the warm start the cache builds today (2026-12-05): AER's
#: defaults and fixed α 0.01, ten seeds each (0–4, then 5–9), in their own folder (the sweep's levels12 arms used another)
LEVELS12_SEEDS = SWEEP / "levels12_seeds"


def test_the_levels12_yardstick_runs_are_the_configs_arms_and_their_spread_is_reproduced(
    tmp_path: Path,
) -> None:
    arms = ["aer", "fixed:alpha=0.01"]
    # seeds 0–4 run first, 5–9 added (2026-12-05) from the same warm start
    assert assert_runs_are_the_configs_arms(sweep_base(), arms, list(range(10)), LEVELS12_SEEDS, 600) == 20
    for seed in range(10):
        assert_one_warm_start(
            [LEVELS12_SEEDS / arm / f"seed{seed}" for arm in ("aer", "fixed_alpha=0.01")], seed
        )
    folders, slugs = [LEVELS12_SEEDS], ["aer", "fixed_alpha=0.01"]
    extra = ["--band-tau", "0.4"]
    kept = assert_seed_spread_reproduced(
        folders, slugs, extra, LEVELS12_SEEDS, "seed-spread-levels12", tmp_path
    )
    # the bonus column reads coef_mean: a fixed α delivers α (a float32 of it) on every step of every seed
    fixed = kept["arms"]["fixed_alpha=0.01"]["bonus"]
    assert all(math.isclose(fixed[k], 0.01, rel_tol=1e-6) for k in fixed)
    assert kept["arms"]["aer"]["bonus"]["median"] < 0.01


def test_the_levels12_no_bonus_runs_are_the_configs_arm_and_their_spread_is_reproduced(
    tmp_path: Path,
) -> None:
    """No bonus at all on levels 1-2 (2026-12-05), seeds 0-9 from the defaults' warm start, read in
    AER's band against the defaults' ten seeds."""
    runs = assert_runs_are_the_configs_arms(
        sweep_base(), ["fixed:alpha=0"], list(range(10)), LEVELS12_SEEDS, 600
    )
    assert runs == 10
    for seed in range(10):
        assert_one_warm_start(
            [LEVELS12_SEEDS / arm / f"seed{seed}" for arm in ("aer", "fixed_alpha=0")], seed
        )
    kept = assert_seed_spread_reproduced(
        [LEVELS12_SEEDS],
        ["aer", "fixed_alpha=0"],
        ["--band-tau", "0.4"],
        LEVELS12_SEEDS / "no_bonus",
        "seed-spread-no-bonus-levels12",
        tmp_path,
    )
    assert [len(arm["seeds"]) for arm in kept["arms"].values()] == [10, 10]
    assert kept["arms"]["fixed_alpha=0"]["bonus"]["max"] == 0.0


#: the floor alone on levels 1-2 (2026-12-07, information): seeds 0-9 in their own folder, from the
#: warm start of the defaults' ten seeds in LEVELS12_SEEDS
LEVELS12_FLOOR = SWEEP / "levels12_floor"
FLOOR_ARM = "aer:update.alpha_min=5.0e-4"


def test_the_levels12_floor_runs_are_the_configs_arm_and_their_spread_is_reproduced(tmp_path: Path) -> None:
    assert (
        assert_runs_are_the_configs_arms(sweep_base(), [FLOOR_ARM], list(range(10)), LEVELS12_FLOOR, 600)
        == 10
    )
    slug = parse_arm(FLOOR_ARM).slug
    for seed in range(10):
        assert_one_warm_start(
            [LEVELS12_SEEDS / "aer" / f"seed{seed}", LEVELS12_FLOOR / slug / f"seed{seed}"], seed
        )
    kept = assert_seed_spread_reproduced(
        [LEVELS12_SEEDS, LEVELS12_FLOOR],
        ["aer", slug],
        [],
        LEVELS12_FLOOR / "floor_vs_defaults",
        "seed-spread-floor-levels12",
        tmp_path,
    )
    assert [len(arm["seeds"]) for arm in kept["arms"].values()] == [10, 10]


def test_robustness_md_quotes_the_floors_paired_readings() -> None:
    """docs/robustness.md's table of the floor against the defaults, task by task: each row the paired
    difference (mean ± standard error) of its committed seed_spread reading, as that reading rounds it."""
    readings = {
        "level 2, seeds 0–9": SEEDS / "floor",
        "level 2, seeds 11–19": SWEEP / "level2_twenty_floor" / "floor_vs_defaults",
        "levels 1–2, seeds 0–9": LEVELS12_FLOOR / "floor_vs_defaults",
    }
    rows = quoted_table(ROOT / "docs" / "robustness.md", "floor-pairs-table")[2:]
    assert len(rows) == len(readings)
    for row, (task, folder) in zip(rows, readings.items(), strict=True):
        paired = json.loads((folder / "seed_spread.json").read_text())["paired_difference"]
        cells = [
            f"{paired[key]['delta']:+.3f} ± {paired[key]['se']:.3f}" for key in ("in_band_share", "pass@1")
        ]
        assert row == f"| {task} | {len(paired['seeds'])} | {cells[0]} | {cells[1]} |"


#: AER's allocations at a constant α = 0.01 (2026-12-05), ten seeds each: `threshold` (the fixed α = 0.01
#: but for the allocation) on level 2, where it was found, and on levels 1-2, where it was not, each read
#: against the fixed arm and against the defaults; the graded `linear` on level 2, read against the
#: fixed arm and against `threshold`
ALLOCATION_ARM = "aer:update.rule=none,alpha_0=0.01"
LINEAR_ARM = "aer:update.rule=none,alpha_0=0.01,allocation.rule=linear"
FIXED = "fixed_alpha=0.01"
ALLOCATION_CASES = {
    # case: (arm, base config, the folders pooled (the arm's runs in the last), and per comparison the
    # arm it is read against, seed_spread's extra options, the folder of the spread, the docs marker)
    "level2": (
        ALLOCATION_ARM,
        level2_base,
        [LEVEL2, SEEDS],
        [
            (FIXED, ["--band-tau", "0.4"], "allocation", "seed-spread-allocation"),
            ("aer", [], "allocation_vs_defaults", "seed-spread-allocation-defaults"),
        ],
    ),
    "levels12": (
        ALLOCATION_ARM,
        sweep_base,
        [LEVELS12_SEEDS],
        [
            (FIXED, ["--band-tau", "0.4"], "allocation", "seed-spread-allocation-levels12"),
            ("aer", [], "allocation_vs_defaults", "seed-spread-allocation-levels12-defaults"),
        ],
    ),
    "linear-level2": (
        LINEAR_ARM,
        level2_base,
        [LEVEL2, SEEDS],
        [
            (FIXED, ["--band-tau", "0.4"], "linear", "seed-spread-linear"),
            (parse_arm(ALLOCATION_ARM).slug, [], "linear_vs_threshold", "seed-spread-linear-threshold"),
        ],
    ),
}


def seed_run(folders: list[Path], slug: str, seed: int) -> Path:
    """An arm's run of ``seed`` in whichever of the pooled folders holds it."""
    return next(
        folder / slug / f"seed{seed}" for folder in folders if (folder / slug / f"seed{seed}").is_dir()
    )


@pytest.mark.parametrize("case", list(ALLOCATION_CASES))
def test_the_allocation_arms_are_the_configs_arms_and_their_spreads_are_reproduced(
    case: str, tmp_path: Path
) -> None:
    arm, base, folders, comparisons = ALLOCATION_CASES[case]
    slug, runs = parse_arm(arm).slug, folders[-1]
    assert assert_runs_are_the_configs_arms(base(), [arm], list(range(10)), runs, 600) == 10
    for seed in range(10):  # one warm start with every arm it is read against: the same score before RL
        names = (slug, *(against for against, *_ in comparisons))
        assert_one_warm_start([seed_run(folders, name, seed) for name in names], seed)
    for against, extra, folder, marker in comparisons:
        kept = assert_seed_spread_reproduced(
            folders, [against, slug], extra, runs / folder, marker, tmp_path / folder
        )
        assert [len(a["seeds"]) for a in kept["arms"].values()] == [10, 10]
        # α never moved, and the allocation withheld part of it from the tokens
        assert 0.005 < kept["arms"][slug]["bonus"]["median"] < 0.01


def test_the_graded_allocation_gave_the_tokens_less_than_threshold_on_level2() -> None:
    spread = json.loads((SEEDS / "linear_vs_threshold" / "seed_spread.json").read_text())["arms"]
    bonus = {slug: arm["bonus"]["median"] for slug, arm in spread.items()}
    assert bonus[parse_arm(LINEAR_ARM).slug] < bonus[parse_arm(ALLOCATION_ARM).slug]


#: the control for the defaults' level-2 entropy gap (2026-12-05): AER's allocation with α frozen at
#: 1e-4, the defaults' median α, seeds 0-9 in their own folder
CONTROL = SWEEP / "level2_control"
CONTROL_ARM = "aer:update.rule=none,alpha_0=1e-4"


@pytest.mark.parametrize(
    ("reference", "extra", "folder", "marker"),
    [
        ("fixed_alpha=0", ["--band-tau", "0.4"], "vs_no_bonus", "seed-spread-control-no-bonus"),
        ("aer", [], "vs_defaults", "seed-spread-control-defaults"),
    ],
    ids=["no_bonus", "defaults"],
)
def test_the_tiny_bonus_control_is_the_configs_arm_and_its_spreads_are_reproduced(
    tmp_path: Path, reference: str, extra: list[str], folder: str, marker: str
) -> None:
    assert assert_runs_are_the_configs_arms(level2_base(), [CONTROL_ARM], list(range(10)), CONTROL, 600) == 10
    slug = parse_arm(CONTROL_ARM).slug
    for seed in range(10):  # the level-2 arms' warm start
        defaults = (LEVEL2 if seed < 3 else SEEDS) / "aer" / f"seed{seed}"
        assert_one_warm_start([defaults, CONTROL / slug / f"seed{seed}"], seed)
    kept = assert_seed_spread_reproduced(
        [LEVEL2, SEEDS, CONTROL], [reference, slug], extra, CONTROL / folder, marker, tmp_path
    )
    assert [len(arm["seeds"]) for arm in kept["arms"].values()] == [10, 10]
    # α frozen: the tokens got at most 1e-4 (less on the steps whose prompts were mostly solved)
    assert 0 < kept["arms"][slug]["bonus"]["max"] <= 1e-4 * (1 + 1e-6)


#: seeds 10-19 of no bonus, the defaults and the control on level 2 (2026-12-05), the same warm start
TWENTY = SWEEP / "level2_twenty"


@pytest.mark.parametrize(
    ("first", "second", "folder", "marker"),
    [
        ("fixed_alpha=0", "aer", "defaults", "seed-spread-twenty-defaults"),
        ("fixed_alpha=0", parse_arm(CONTROL_ARM).slug, "control", "seed-spread-twenty-control"),
    ],
    ids=["defaults", "control"],
)
def test_twenty_seeds_are_the_configs_arms_and_their_spreads_are_reproduced(
    tmp_path: Path, first: str, second: str, folder: str, marker: str
) -> None:
    arms = ["aer", "fixed:alpha=0", CONTROL_ARM]
    assert assert_runs_are_the_configs_arms(level2_base(), arms, list(range(10, 20)), TWENTY, 600) == 30
    for seed in range(10, 20):
        slugs = ("aer", "fixed_alpha=0", parse_arm(CONTROL_ARM).slug)
        assert_one_warm_start([TWENTY / slug / f"seed{seed}" for slug in slugs], seed)
    kept = assert_seed_spread_reproduced(
        [LEVEL2, SEEDS, CONTROL, TWENTY],
        [first, second],
        ["--band-tau", "0.4"],
        TWENTY / folder,
        marker,
        tmp_path,
    )
    assert [len(arm["seeds"]) for arm in kept["arms"].values()] == [20, 20]
    assert kept["paired_difference"]["seeds"] == list(range(20))


#: the third low-climb rule's short-task runs (2026-12-06, docs/robustness.md, "The low-climb term, a
#: third look"): the term alone, on levels 1-2 seeds 0-9 and level 2 seeds 10-19, each paired with the
#: committed defaults' run of its seed: (its folder, the config, seeds, the defaults' runs)
LOW_CLIMB_ARM = "aer:update.linear=0.05,update.linear_on=low_climb"
THIRD_RULE = [
    (SWEEP / "levels12_lowclimb", sweep_base, list(range(10)), LEVELS12_SEEDS / "aer"),
    (SWEEP / "level2_twenty_lowclimb", level2_base, list(range(10, 20)), TWENTY / "aer"),
]


@pytest.mark.parametrize(
    ("study", "base", "seeds", "defaults"), THIRD_RULE, ids=[t[0].name for t in THIRD_RULE]
)
def test_the_third_rules_runs_are_the_configs_arm_from_the_defaults_warm_start(
    study: Path, base: Callable[[], dict[str, Any]], seeds: list[int], defaults: Path
) -> None:
    assert assert_runs_are_the_configs_arms(base(), [LOW_CLIMB_ARM], seeds, study, 600) == len(seeds)
    assert len(list(study.glob("*/seed*"))) == len(seeds)
    assert_same_warm_start(defaults, study, [parse_arm(LOW_CLIMB_ARM).slug], seeds)


#: a plant none of the defaults or candidates was tuned on (2026-12-05): level 2 at twice the learning
#: rate, the defaults, no bonus and fixed 0.01 / 0.03, seeds 0-5 (0-2 first, 3-5 added), and AER's knobs
#: (step 0.015 / 0.15, τ 0.3 / 0.5), seeds 0-5
LR_PLANT = SWEEP / "level2_lr6e-4"


def test_the_twice_the_learning_rate_runs_are_the_configs_arms_and_their_reading_is_reproduced(
    tmp_path: Path,
) -> None:
    base = level2_base()
    base["optim"]["lr"] = 6e-4
    arms = ["aer", "fixed:alpha=0", "fixed:alpha=0.01", "fixed:alpha=0.03"]
    assert assert_runs_are_the_configs_arms(base, arms, list(range(6)), LR_PLANT, 600) == 24
    # AER's own knobs (the sweep's arms), seeds 0-5, added after the first four
    knobs = ["aer:update.step=0.015", "aer:update.step=0.15", "aer:anchor.tau=0.3", "aer:anchor.tau=0.5"]
    assert assert_runs_are_the_configs_arms(base, knobs, list(range(6)), LR_PLANT, 600) == 24
    script = ROOT / "benchmarks" / "robustness_reading.py"
    reading = assert_reading_reproduced(script, [str(LR_PLANT)], LR_PLANT, tmp_path)
    assert list(reading["tasks"]) == ["level2_lr6e-4"]
    assert_docs_quote(LR_PLANT / "reading.md", ROOT / "docs" / "ablations.md", "lr-plant-table", 9)
