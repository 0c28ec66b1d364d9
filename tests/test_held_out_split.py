"""The held-out split of a dataset file (data.eval_path unset): eval.n_prompts rows drawn at random with
data.seed, disjoint from training, reproducible, each part in file order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyctl.config import load_run_config
from entropyctl.data.loaders import split_held_out
from entropyctl.data.synthetic import Problem
from entropyctl.trainer.run import build_data


def rows(n: int) -> list[Problem]:
    return [Problem(prompt=f"{i}+1=", answer=str(i + 1), level=1, id=f"row{i}") for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 60), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_split_is_a_seeded_partition_in_file_order(n: int, data: st.DataObject, seed: int) -> None:
    k = data.draw(st.integers(0, n - 1))
    problems = rows(n)
    train, held = split_held_out(problems, k, seed)
    assert len(held) == k and len(train) == n - k
    assert sorted([*train, *held], key=problems.index) == problems  # a partition of the rows
    assert train == sorted(train, key=problems.index) and held == sorted(held, key=problems.index)
    assert split_held_out(problems, k, seed) == (train, held)  # reproducible


def test_split_is_not_the_tail_and_moves_with_the_seed() -> None:
    problems = rows(100)
    held_0 = split_held_out(problems, 10, 0)[1]
    held_1 = split_held_out(problems, 10, 1)[1]
    assert held_0 != problems[-10:] and held_0 != held_1
    with pytest.raises(ValueError, match="cannot hold out 5 of 5 rows"):
        split_held_out(rows(5), 5, 0)


def test_the_trainer_holds_out_the_seeded_rows(tmp_path: Path) -> None:
    path = tmp_path / "sums.jsonl"
    lines = [json.dumps({"problem": f"{i}+1=", "answer": str(i + 1)}) for i in range(30)]
    path.write_text("\n".join(lines) + "\n")
    for seed in (0, 7):
        config = load_run_config(
            None, ["data.source=file", f"data.path={path}", "eval.n_prompts=5", f"data.seed={seed}"]
        )
        sampler, held = build_data(config)
        expected = [p.prompt for p in split_held_out(rows(30), 5, seed)[1]]
        assert [p.prompt for p in held] == expected
