"""The committed token-level study (benchmarks/ablation_token_level: clip_cov, kl_cov, high_entropy_tokens at
their defaults, 3 seeds × 1500 steps of the collapse task) is what its run directories say: every run is the
shipped config's arm × seed, the reading (beside the v3 collapse runs' no-bonus and aer arms cut at step
1500) is reproduced from the committed metrics and summaries, and docs/ablations.md quotes its rows."""

from __future__ import annotations

from pathlib import Path

import yaml
from committed_runs import assert_docs_quote, assert_reading_reproduced, assert_runs_are_the_configs_arms

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "ablation_token_level"
V3 = ROOT / "benchmarks" / "ablation_collapse_v3"
CONFIG = ROOT / "configs" / "ablation_token_level.yaml"
ARMS = ["clip_cov", "kl_cov", "high_entropy_tokens"]


def test_committed_token_level_runs_are_the_shipped_configs_arms() -> None:
    base = yaml.safe_load(CONFIG.read_text())
    assert assert_runs_are_the_configs_arms(base, ARMS, [0, 1, 2], STUDY, 1500) == 9


def test_reading_is_reproduced_from_the_committed_runs(tmp_path: Path) -> None:
    script = ROOT / "benchmarks" / "token_level_reading.py"
    committed = assert_reading_reproduced(
        script, [str(STUDY), "--reuse", str(V3), "--at", "1500"], STUDY, tmp_path
    )
    arms = committed["arms"]
    assert all(len(arms[arm]) >= 3 for arm in ["fixed:alpha=0", "aer", *ARMS]), {
        a: len(r) for a, r in arms.items()
    }


def test_docs_quote_the_reading() -> None:
    assert_docs_quote(STUDY / "reading.md", ROOT / "docs" / "ablations.md", "token-level-table", 5, "| `")
