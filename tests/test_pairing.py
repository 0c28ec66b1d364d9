"""benchmarks/pairing.py: the first step two runs' batch rewards differ, on hand-made metrics, and the
committed reading (how much pairing by seed buys in the ten-seed spreads) reproduced from the committed
runs and quoted by docs/ablations.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from committed_runs import load_benchmark, quoted_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture(scope="module")
def pairing() -> Any:
    return load_benchmark("pairing")


def _metrics(path: Path, rewards: list[str]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "reward", "entropy"])
        writer.writeheader()
        for step, reward in enumerate(rewards, start=1):
            writer.writerow({"step": step, "reward": reward, "entropy": 0.5})
    return path


def test_the_first_different_reward_is_the_logged_step(pairing: Any, tmp_path: Path) -> None:
    a = _metrics(tmp_path / "a.csv", ["0.1", "0.2", "0.3", "0.4"])
    b = _metrics(tmp_path / "b.csv", ["0.1", "0.2", "0.35", "0.4"])
    assert pairing.first_different_reward(a, b) == 3
    assert pairing.first_different_reward(a, a) is None


def test_reading_is_reproduced_from_the_committed_runs(pairing: Any, tmp_path: Path) -> None:
    assert pairing.main(["--out", str(tmp_path)]) == 0
    for name in ("pairing.md", "pairing.json"):
        assert (tmp_path / name).read_text() == (RESULTS / name).read_text()


def test_pairing_buys_most_where_the_arms_are_one_run_for_longest() -> None:
    """The reading's claim, on the committed numbers: the arms that share their run with the defaults
    until the entropy first crosses H* (rearm, climb boost: the first different reward past step 100)
    pair better on held-out pass@1 than every arm that differs from the first update."""
    spreads = json.loads((RESULTS / "pairing.json").read_text())["spreads"]
    late = [s for s in spreads if s["first_different_reward"]["min"] > 100]
    early = [s for s in spreads if s["first_different_reward"]["max"] <= 40]
    assert len(late) >= 3 and len(early) >= 8
    assert max(s["pass@1"]["se_ratio"] for s in late) < 0.7
    assert sorted(s["pass@1"]["se_ratio"] for s in early)[len(early) // 2] > 0.8


def test_docs_quote_the_reading() -> None:
    """docs/ablations.md quotes the whole table (indented under its list item)."""
    assert (
        quoted_table(ROOT / "docs" / "ablations.md", "pairing")
        == (RESULTS / "pairing.md").read_text().splitlines()
    )
