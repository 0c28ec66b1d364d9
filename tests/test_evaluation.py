"""pass@k estimator (Chen et al. 2021) against hand-computed values, and the EVAL summary layout."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entropyctl.trainer.evaluation import (
    ProblemOutcome,
    evaluate_problems,
    format_eval_table,
    parse_ks,
    pass_at_k,
    summarize_pass_at_k,
)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),  # pass@1 = c/n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (4, 0, 2, 0.0),  # no correct sample
        (4, 3, 2, 1.0),  # n - c = 1 < k: every pair holds a correct one
        (8, 8, 8, 1.0),
        (8, 1, 8, 1.0),
        (8, 1, 4, 1 - 35 / 70),  # 1 - C(7,4)/C(8,4)
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_binomials(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)


def test_pass_at_k_large_n_is_stable() -> None:
    # the binomials here overflow a float; the product form does not
    value = pass_at_k(5000, 3, 1000)
    exact = 1 - math.comb(4997, 1000) / math.comb(5000, 1000)  # Python ints: exact
    assert math.isfinite(value) and value == pytest.approx(exact, rel=1e-9)


def test_pass_at_k_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="k=4"):
        pass_at_k(2, 1, 4)
    with pytest.raises(ValueError, match="c=3"):
        pass_at_k(2, 3, 1)


def test_summary_per_level_and_skips_unestimable_k() -> None:
    outcomes = [ProblemOutcome(4, 4, 1), ProblemOutcome(4, 2, 1), ProblemOutcome(4, 0, 2)]
    result = summarize_pass_at_k(outcomes, [1, 2, 8])
    assert "pass@8" not in result  # k > n is not estimable
    assert result["pass@1"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result["by_level"]["1"]["pass@1"] == pytest.approx(0.75)
    assert result["by_level"]["1"]["pass@2"] == pytest.approx((1 + (1 - 1 / 6)) / 2)
    assert result["by_level"]["2"]["pass@2"] == 0.0
    assert result["n_samples"] == 4 and result["n_problems"] == 3
    table = format_eval_table(result, "test")
    assert "all" in table and "pass@2" in table


def test_parse_ks() -> None:
    assert parse_ks("8,1,4,4") == [1, 4, 8]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_ks("1,x")


@dataclass
class _Problem:
    answer: str
    level: int


def test_evaluate_problems_counts_correct_samples() -> None:
    problems = [_Problem("1", 1), _Problem("2", 1), _Problem("3", 2)]

    def sample(batch: list[_Problem], n: int) -> list[list[str]]:
        # problem "1": all right; "2": one right; "3": none right
        table = {"1": ["1"] * n, "2": ["2"] + ["x"] * (n - 1), "3": ["x"] * n}
        return [table[p.answer] for p in batch]

    def reward(completions: list[str], answers: list[str]) -> list[float]:
        return [float(c == a) for c, a in zip(completions, answers, strict=True)]

    result = evaluate_problems(problems, sample, reward, n=4, ks=[1, 4], batch_size=2)
    assert result["pass@1"] == pytest.approx((1 + 0.25 + 0) / 3)
    assert result["pass@4"] == pytest.approx((1 + 1 + 0) / 3)
    assert result["by_level"]["2"]["pass@4"] == 0.0


# ------------------------------------------------------------- evaluate == the run's own evaluation


@pytest.mark.slow
def test_evaluate_equals_the_summary_after_evaluation(tmp_path, capsys) -> None:
    # The same checkpoint, seed, problems and samples per problem: `entropyctl evaluate` on the run dir
    # reproduces summary.json's "after" pass@k exactly, and both say which seed and sample count they used.
    import json

    from trainer_helpers import tiny_config

    from entropyctl import cli
    from entropyctl.trainer.run import run_training

    config = tiny_config(
        "trainer.steps=2", "eval.before=false", "eval.n_prompts=12", "eval.n_samples=4", "eval.ks=[1,2,4]"
    )
    run_dir = tmp_path / "run"
    summary = run_training(config, run_dir)
    after = summary["after"]
    assert after["seed"] == config.seed and after["n_samples"] == 4
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(run_dir), "--json", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert f"seed {config.seed}, 4 samples per problem, 12 problems" in out
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    for key in ("pass@1", "pass@2", "pass@4", "n_samples", "n_problems", "seed"):
        assert evaluated[key] == after[key], key
    assert 0.0 < after["pass@4"]  # a non-trivial comparison: some samples are right
    # A different seed draws a different stream (so the equality above is not vacuous).
    capsys.readouterr()
    cli.main(
        ["evaluate", "--checkpoint", str(run_dir), "--seed", "12345", "--json", str(tmp_path / "e2.json")]
    )
    other = json.loads((tmp_path / "e2.json").read_text())
    assert other["seed"] == 12345


@pytest.mark.slow
def test_evaluate_refuses_weights_that_do_not_fit_the_model(tmp_path, capsys) -> None:
    # The checkpoint is loaded strictly: a model built differently (here --set model.tiny.layers=2 on a
    # 1-layer run) is an error naming the missing weights, never a partly loaded policy.
    from trainer_helpers import tiny_config

    from entropyctl import cli
    from entropyctl.trainer.run import run_training

    run_dir = tmp_path / "run"
    run_training(tiny_config("trainer.steps=1", "eval.before=false", "eval.n_prompts=2"), run_dir)
    capsys.readouterr()
    status = cli.main(["evaluate", "--checkpoint", str(run_dir), "--set", "model.tiny.layers=2"])
    err = capsys.readouterr().err
    assert status == 2
    assert "do not fit the model" in err and "missing ['model.layers.1." in err
