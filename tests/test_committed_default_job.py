"""The committed runs behind README's default-job table (benchmarks/default_job_2026-12-03): each is
`entropyctl train` at the embedded default with only the seed (and where it wrote) changed, finished;
benchmarks/default_job_reading.py reproduces the table from them, and README quotes it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from committed_runs import assert_docs_quote

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
    runs = [str(RUNS / f"s{seed}") for seed in (0, 1, 2)]
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *runs, "--json", str(tmp_path / "reading.json")],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    ).stdout
    assert out.strip() == (RUNS / "table.md").read_text().strip()
    committed = json.loads((RUNS / "reading.json").read_text())
    fresh = json.loads((tmp_path / "reading.json").read_text())
    assert [{k: v for k, v in r.items() if k != "run"} for r in fresh] == [
        {k: v for k, v in r.items() if k != "run"} for r in committed
    ]
    assert_docs_quote(RUNS / "table.md", ROOT / "README.md", "default-job-table", 4)
