"""The committed runs behind README's default-job table (benchmarks/default_job_2026-12-03): each is
`entropyctl train` at the embedded default with only the seed (and where it wrote) changed, finished;
benchmarks/default_job_reading.py reproduces the table from them, and README quotes it. The same for
the one-setting probes docs/training.md reads (the default with one controller setting changed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from committed_runs import assert_docs_quote, assert_printed_table_reproduced, quoted_table

from entropyctl.config import load_run_config, parse_run_config, parse_written_config

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "default_job_2026-12-03"
SCRIPT = ROOT / "benchmarks" / "default_job_reading.py"


def assert_default_runs(
    runs: list[Path], update: dict[str, Any], changes: dict[str, dict[str, Any]] | None = None
) -> None:
    """Each run is `entropyctl train` at the embedded default with its seed (0, 1, 2 in order), one
    thread, the controller's ``update`` fields and the sections' ``changes`` overridden, finished."""
    default = load_run_config(None).model_dump(mode="json")
    for seed, run in enumerate(runs):
        written = yaml.safe_load((run / "config.yaml").read_text())
        expected = {
            **default,
            "seed": seed,
            "output_dir": written["output_dir"],
            "run_name": written["run_name"],
        }
        expected["trainer"] = {**default["trainer"], "threads": 1}
        expected["controller"] = {
            **default["controller"],
            "update": {**default["controller"]["update"], **update},
        }
        for section, fields in (changes or {}).items():
            expected[section] = {**expected[section], **fields}
        assert parse_written_config(written) == parse_run_config(expected), run
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == default["trainer"]["steps"]


def test_the_runs_are_the_embedded_default_with_their_seed() -> None:
    assert_default_runs([RUNS / f"s{seed}" for seed in (0, 1, 2)], {})


def test_the_table_is_reproduced_and_readme_quotes_it(tmp_path: Path) -> None:
    runs = [RUNS / f"s{seed}" for seed in (0, 1, 2)]
    assert_printed_table_reproduced(SCRIPT, runs, RUNS, tmp_path)
    assert_docs_quote(RUNS / "table.md", ROOT / "README.md", "default-job-table", 4)


#: the one-setting probes of the main job in docs/training.md: run folder prefix, docs marker, the
#: `--set` overrides (over the embedded default, seed and threads), seeds 0-2 each
PROBES = [
    ("probe_step015_s", "probe-step015", {"step": 0.15}),
    ("probe_boost_s", "probe-boost", {"climb_boost": 10.0, "climb_from": 0.2}),
    ("probe_floor_s", "probe-floor", {"alpha_min": 5e-4}),
    ("probe_rearm_s", "probe-rearm", {"rearm_at_target": True}),
    ("probe_rearm5e4_s", "probe-rearm5e4", {"rearm_at_target": True, "rearm_alpha": 5e-4}),
    ("probe_linear_s", "probe-linear", {"linear": 0.05, "linear_on": "climb"}),
    ("probe_lowclimb_s", "probe-lowclimb", {"linear": 0.05, "linear_on": "low_climb"}),
]


@pytest.mark.parametrize(("prefix", "marker", "update"), PROBES, ids=[p[1] for p in PROBES])
def test_the_probes_are_the_default_with_one_setting_and_the_docs_quote_them(
    prefix: str, marker: str, update: dict[str, Any], tmp_path: Path
) -> None:
    runs = [RUNS / f"{prefix}{seed}" for seed in (0, 1, 2)]
    assert_default_runs(runs, update)
    command = [sys.executable, str(SCRIPT), *map(str, runs)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()]
    quoted = quoted_table(ROOT / "docs" / "training.md", marker)
    assert [line for line in quoted if line[2:3].isdigit()] == rows


#: the algorithm options of 2026-12-07 on the main job (docs/training.md): run folder prefix, docs marker,
#: and the run config's fields they change (over the embedded default, seed and threads), seeds 0-2 each
OPTIONS = [
    (
        "opt_rloo_s",
        "opt-rloo",
        {"algorithm": {"advantage_baseline": "leave-one-out", "advantage_scale": "none"}},
    ),
    ("opt_batch_s", "opt-batch", {"algorithm": {"advantage_scale": "batch"}}),
    (
        "opt_gspo_s",
        "opt-gspo",
        {
            "algorithm": {"importance_level": "sequence", "loss_agg": "seq-mean-token-mean"},
            "controller": {"clip_low": 3e-4, "clip_high": 4e-4},
        },
    ),
]


@pytest.mark.parametrize(("prefix", "marker", "changes"), OPTIONS, ids=[o[1] for o in OPTIONS])
def test_the_option_runs_are_the_default_with_their_options_and_the_docs_quote_them(
    prefix: str, marker: str, changes: dict[str, dict[str, Any]]
) -> None:
    runs = [RUNS / f"{prefix}{seed}" for seed in (0, 1, 2)]
    assert_default_runs(runs, {}, changes)
    command = [sys.executable, str(SCRIPT), *map(str, runs)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout
    rows = [line for line in printed.splitlines() if line.startswith("| ") and line[2].isdigit()]
    quoted = quoted_table(ROOT / "docs" / "training.md", marker)
    assert [line for line in quoted if line[2:3].isdigit()] == rows
