"""examples/own_data (docs/data.md): the config loads, the file gives the split and levels the doc
describes, and the example verifier scores as documented, through the same worker process training uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from entropyctl.config import load_run_config
from entropyctl.rewards.registry import get_reward
from entropyctl.trainer.run import build_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def at_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository root
    monkeypatch.syspath_prepend(str(REPO))


def test_example_config_loads_and_splits_the_file(at_repo_root: None) -> None:
    config = load_run_config(REPO / "examples" / "own_data" / "config.yaml")
    sampler, held_out = build_data(config)
    assert len(held_out) == config.eval.n_prompts == 20
    assert sampler.levels == [1, 2, 3]
    assert {p.level for p in held_out} <= {1, 2, 3}


def test_example_verifier_gives_partial_credit(at_repo_root: None) -> None:
    reward = get_reward("examples.own_data.reward:near_miss", timeout=30.0)
    try:
        scores = reward(["13", "x = 12", "no number", "14", "-3"], ["13", "13", "13", "13", "-3"])
    finally:
        reward.close()
    assert scores == [1.0, 0.5, 0.0, 0.5, 1.0]
