"""The committed SmolLM2-135M runs of AER at its defaults (benchmarks/smollm2_aer): each is
configs/smollm2_aer.yaml with the overrides named here, finished; benchmarks/smollm2_reading.py
reproduces their table, and docs/robustness.md quotes it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from committed_runs import assert_docs_quote, assert_printed_table_reproduced

from entropyctl.config import load_run_config, parse_written_config

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "smollm2_aer"
SCRIPT = ROOT / "benchmarks" / "smollm2_reading.py"
#: run folder -> the overrides of configs/smollm2_aer.yaml it ran with (besides where it wrote, threads)
#: AER's allocation at a constant α = 0.01 (update rule none): the fixed arm but for the allocation
CONSTANT_ALPHA = [
    "trainer.steps=160",
    "trainer.keep_checkpoints=1",
    "controller.update.rule=none",
    "controller.alpha_0=0.01",
]
OVERRIDES = {
    "t8_noskip": ["rollout.max_new_tokens=8", "algorithm.skip_no_signal=false"],
    "t32_noskip": ["algorithm.skip_no_signal=false"],
    "t32_skip": [],
    # resumed from t32_skip's last checkpoint (step 60) and run on to step 160
    "t32_skip_to160": ["trainer.steps=160"],
    # 2026-12-04, each run straight to step 160 (resumed once from its own step-100 checkpoint)
    "seed1_160": ["trainer.steps=160", "seed=1"],
    # 2026-12-06: a third seed of the defaults
    "seed2_160": ["trainer.steps=160", "trainer.keep_checkpoints=1", "seed=2"],
    "rearm_160": ["trainer.steps=160", "controller.update.rearm_at_target=true"],
    # 2026-12-05: the bonus on every prompt, seed 0, without and with the rearm
    "uniform_160": ["trainer.steps=160", "trainer.keep_checkpoints=1", "controller.allocation.rule=uniform"],
    "uniform_rearm_160": [
        "trainer.steps=160",
        "trainer.keep_checkpoints=1",
        "controller.allocation.rule=uniform",
        "controller.update.rearm_at_target=true",
    ],
    # 2026-12-05: the tiny tasks' yardstick, a fixed α = 0.01 on every prompt, seeds 0 and 1
    "fixed_160": [
        "trainer.steps=160",
        "trainer.keep_checkpoints=1",
        "controller.name=fixed",
        "controller.alpha=0.01",
    ],
    "fixed_seed1_160": [
        "trainer.steps=160",
        "trainer.keep_checkpoints=1",
        "controller.name=fixed",
        "controller.alpha=0.01",
        "seed=1",
    ],
    # 2026-12-05: AER's threshold allocation at a constant α = 0.01 (the fixed arm but for the allocation)
    "alloc_160": CONSTANT_ALPHA,
    # 2026-12-05: the graded allocation (linear) at the same constant α
    "linear_160": [*CONSTANT_ALPHA, "controller.allocation.rule=linear"],
    # 2026-12-05: seed 1 of the threshold allocation at α = 0.01
    "alloc_seed1_160": [*CONSTANT_ALPHA, "seed=1"],
    # 2026-12-05: seed 1 of the linear allocation at α = 0.01
    "linear_seed1_160": [*CONSTANT_ALPHA, "controller.allocation.rule=linear", "seed=1"],
}


def committed() -> list[str]:
    return [name for name in OVERRIDES if (RUNS / name).is_dir()]


def test_the_runs_are_the_config_with_their_overrides() -> None:
    assert committed() == list(OVERRIDES)
    for name in committed():
        written = yaml.safe_load((RUNS / name / "config.yaml").read_text())
        expected = load_run_config(
            ROOT / "configs" / "smollm2_aer.yaml",
            [
                *OVERRIDES[name],
                "trainer.threads=1",
                f"output_dir={written['output_dir']}",
                # a run written straight to --out has no run name (YAML null)
                f"run_name={'null' if written['run_name'] is None else written['run_name']}",
            ],
        )
        assert parse_written_config(written) == expected, name
        summary = json.loads((RUNS / name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == expected.trainer.steps


def test_the_continued_run_is_the_60_step_run_resumed() -> None:
    """t32_skip_to160 resumed t32_skip's step-60 checkpoint: its first 60 rows are that run's, exactly."""
    first = (RUNS / "t32_skip" / "metrics.csv").read_text().splitlines()
    continued = (RUNS / "t32_skip_to160" / "metrics.csv").read_text().splitlines()
    assert len(first) == 61 and len(continued) == 161 and continued[:61] == first
    summary = json.loads((RUNS / "t32_skip_to160" / "summary.json").read_text())
    assert (
        summary["resume"]["changes"] == []
        and summary["before"] == json.loads((RUNS / "t32_skip" / "summary.json").read_text())["before"]
    )


def test_the_runs_stopped_by_a_full_disk_resumed_their_own_step_100_checkpoint_unchanged() -> None:
    for name in ("seed1_160", "rearm_160"):
        resume = json.loads((RUNS / name / "summary.json").read_text())["resume"]
        assert resume["changes"] == [] and resume["checkpoint"].endswith("/checkpoints/step-000100.ckpt")
        rows = (RUNS / name / "metrics.csv").read_text().splitlines()[1:]
        assert [int(r.split(",")[0]) for r in rows] == list(range(1, 161))


def test_the_table_is_reproduced_and_the_docs_quote_it(tmp_path: Path) -> None:
    runs = [RUNS / name for name in committed()]
    assert_printed_table_reproduced(SCRIPT, runs, RUNS, tmp_path)
    assert_docs_quote(RUNS / "table.md", ROOT / "docs" / "robustness.md", "smollm2-table", len(runs))


def test_the_fixed_runs_are_read_against_the_target_the_defaults_set_on_the_same_seed() -> None:
    """A fixed α has no H*: its band is read against 0.4·H0 of its first reading, which is the first
    reading — so the H0, and the H* — of the defaults' run of the same seed (the same first step)."""
    reading = {r["name"]: r for r in json.loads((RUNS / "reading.json").read_text())}
    for fixed, defaults in (("fixed_160", "t32_skip_to160"), ("fixed_seed1_160", "seed1_160")):
        first = [(RUNS / name / "metrics.csv").read_text().splitlines()[1] for name in (fixed, defaults)]
        assert first[0].split(",")[3] == first[1].split(",")[3]  # the entropy of step 1
        assert reading[fixed]["target_tau"] == 0.4 and reading[defaults]["target_tau"] is None
        # the τ a fixed run is read against (default_job_reading.TARGET_TAU, a literal) is the one its
        # pair ran with: a change of AER's default τ must not re-read these pairs silently
        written = yaml.safe_load((RUNS / defaults / "config.yaml").read_text())
        assert written["controller"]["anchor"] == {"mode": "initial", "tau": 0.4, "steps": 1}
        assert reading[fixed]["target_entropy"] == reading[defaults]["target_entropy"]
        assert reading[fixed]["controller"] == "fixed α=0.01"
