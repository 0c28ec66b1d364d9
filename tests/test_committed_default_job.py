"""The committed runs behind README's default-job table (benchmarks/default_job_2026-12-03): each is
`entropyctl train` at the embedded default with only the seed (and where it wrote) changed, finished;
benchmarks/default_job_reading.py reproduces the table from them, and README quotes it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from committed_runs import assert_docs_quote, assert_printed_table_reproduced

from entropyctl.config import load_run_config, parse_run_config, parse_written_config

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "default_job_2026-12-03"
SCRIPT = ROOT / "benchmarks" / "default_job_reading.py"


def test_the_runs_are_the_embedded_default_with_their_seed() -> None:
    default = load_run_config(None).model_dump(mode="json")
    for seed in (0, 1, 2):
        run = RUNS / f"s{seed}"
        written = yaml.safe_load((run / "config.yaml").read_text())
        expected = {
            **default,
            "seed": seed,
            "output_dir": written["output_dir"],
            "run_name": written["run_name"],
        }
        expected["trainer"] = {**default["trainer"], "threads": 1}
        assert parse_written_config(written) == parse_run_config(expected), run
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == default["trainer"]["steps"]


def test_the_table_is_reproduced_and_readme_quotes_it(tmp_path: Path) -> None:
    runs = [RUNS / f"s{seed}" for seed in (0, 1, 2)]
    assert_printed_table_reproduced(SCRIPT, runs, RUNS, tmp_path)
    assert_docs_quote(RUNS / "table.md", ROOT / "README.md", "default-job-table", 4)
