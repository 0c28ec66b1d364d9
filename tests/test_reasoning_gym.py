"""reasoning-gym as an external task: config, the seeded stream and its held-out split, graded levels,
the verifier (our reward against the datasets' own ``score_answer``), the warm-start cache key, the
missing-extra message, and one short end-to-end run on the tiny model."""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from committed_runs import assert_docs_quote
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("reasoning_gym", reason="the `tasks` extra (reasoning-gym) is installed by .ci/run")

from entropyctl.config import ConfigError, load_run_config  # noqa: E402
from entropyctl.data.reasoning_gym import GoldAnswer, ReasoningGymTask  # noqa: E402
from entropyctl.rewards import get_reward  # noqa: E402
from entropyctl.rewards.answers import MAX_TEXT_CHARS  # noqa: E402
from entropyctl.rewards.reasoning_gym import (  # noqa: E402
    BELOW_ONE,
    ReasoningGymVerifier,
    extract_final_answer,
)
from entropyctl.trainer.run import build_data, run_training  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHAIN_SUM_LEVELS = {
    1: {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1},
    2: {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1},
    3: {"min_terms": 2, "max_terms": 2, "min_digits": 2, "max_digits": 2},
}


@pytest.fixture(scope="module")
def reward():
    reward = get_reward("reasoning_gym", timeout=10.0)
    yield reward
    reward.close()


def chain_sum(**kwargs) -> ReasoningGymTask:
    return ReasoningGymTask("chain_sum", levels=CHAIN_SUM_LEVELS, seed=kwargs.pop("seed", 0), **kwargs)


# ----------------------------------------------------------------------------------------- config


def _rg(*overrides: str):
    return load_run_config(REPO / "configs" / "rg_chain_sum.yaml", list(overrides))


def test_shipped_config_parses_with_levels_as_parameter_sets() -> None:
    config = _rg()
    assert config.data.source == "reasoning_gym" and config.data.name == "chain_sum"
    assert isinstance(config.data.levels, dict) and len(config.data.levels) >= 3
    assert config.reward.name == "reasoning_gym"


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        (["data.name=null"], "data.name", "required when data.source is 'reasoning_gym'"),
        (["data.levels=[1, 2]"], "data.levels", "map each level to the dataset parameters"),
        (
            ["reward.name=math"],
            "reward.name",
            "data.source 'reasoning_gym' is scored by reward 'reasoning_gym'",
        ),
        (
            ["data.source=synthetic", "data.levels=null", "data.strip_prefix=null"],
            "data.name",
            "only read when data.source is 'reasoning_gym'",
        ),
    ],
)
def test_bad_config_names_the_field(overrides: list[str], field: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _rg(*overrides)
    assert field in str(info.value) and expected in str(info.value)


def test_synthetic_source_rejects_a_level_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["data.levels={1: {min_terms: 2}}"])
    assert "data.levels" in str(info.value) and "a mapping of level → parameters is for" in str(info.value)


def test_wrong_name_lists_the_close_ones() -> None:
    with pytest.raises(
        ValueError, match=r"no dataset 'chain_sm'; did you mean chain_sum, decimal_chain_sum\?"
    ):
        ReasoningGymTask("chain_sm")


def test_unknown_or_invalid_parameters_name_the_level_and_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"data.levels.2: chain_sum has no parameter 'terms' \(valid: min_terms"
    ):
        ReasoningGymTask("chain_sum", levels={1: {}, 2: {"terms": 3}})
    with pytest.raises(
        ValueError, match=r"data.levels.1: chain_sum rejects min_terms=0: min_terms must be positive"
    ):
        ReasoningGymTask("chain_sum", levels={1: {"min_terms": 0}})
    with pytest.raises(ValueError, match=r"data.options.seed: set data.seed instead"):
        ReasoningGymTask("chain_sum", options={"seed": 3})


def test_missing_install_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    # A reasoning_gym that fails to import, first on the path: what a machine without the extra sees.
    (tmp_path / "reasoning_gym.py").write_text("raise ImportError('No module named reasoning_gym')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "entropyctl.cli",
        "train",
        "--config",
        str(REPO / "configs" / "rg_chain_sum.yaml"),
    ]
    done = subprocess.run([*command, "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert (done.stdout + done.stderr).strip().splitlines() == [
        "entropyctl train: error: data.source 'reasoning_gym' needs the reasoning-gym package: "
        "pip install 'entropyctl[tasks]'"
    ]


# ----------------------------------------------------------------------------------------- data


def test_levels_are_the_datasets_own_parameters() -> None:
    task = chain_sum()
    for problem in task.sample(300, 1):
        metadata = problem.answer.entry["metadata"]
        params = CHAIN_SUM_LEVELS[problem.level]
        assert metadata["num_terms"] == params["min_terms"] == params["max_terms"]
        assert metadata["num_digits"] == params["min_digits"]
    assert {p.level for p in task.sample(300, 2)} == {1, 2, 3}


def test_stream_is_a_function_of_the_seed_it_is_given() -> None:
    first, second = chain_sum(), chain_sum()
    second.sample(17)  # advancing the task's own generator changes nothing for seeded draws
    assert first.sample(40, 123) == second.sample(40, 123)
    assert first.sample(40, 123) != first.sample(40, 124)


def test_resumed_sampler_draws_what_the_uninterrupted_one_drew() -> None:
    config = _rg("eval.n_prompts=12")
    uninterrupted, _ = build_data(config)
    steps = [uninterrupted.sample(8, step=step, rank=0) for step in range(1, 7)]
    resumed, _ = build_data(config)  # a fresh process after a checkpoint at step 3
    assert [resumed.sample(8, step=step, rank=0) for step in range(4, 7)] == steps[3:]
    assert steps[0] != steps[1]
    assert uninterrupted.sample(8, step=1, rank=1) != steps[0]  # ranks draw different prompts


def test_held_out_split_is_balanced_distinct_and_never_drawn_for_training() -> None:
    # Level 1 (a + b, one digit) has only 200 distinct questions: 30 of them held out.
    task = chain_sum(held_out_size=90)
    held_out = task.held_out()
    assert len(held_out) == 90 and [sum(p.level == lv for p in held_out) for lv in (1, 2, 3)] == [30, 30, 30]
    questions = {p.prompt for p in held_out}
    assert len(questions) == 90
    drawn = [p.prompt for seed in range(10) for p in task.sample(300, seed)]
    assert not questions & set(drawn)
    assert len({p for p in drawn if p in {q.prompt for q in held_out if q.level == 1}}) == 0
    # the training stream still covers the rest of level 1
    assert len({p.prompt for p in task.sample(3000, 99) if p.level == 1}) > 150


def test_strip_prefix_shortens_the_prompt_only() -> None:
    prefix = "State the final answer to the following arithmetic problem: "
    plain, short = chain_sum(), chain_sum(strip_prefix=prefix)
    for a, b in zip(plain.sample(20, 5), short.sample(20, 5), strict=True):
        assert a.prompt == prefix + b.prompt and a.answer == b.answer and a.answer.entry == b.answer.entry


def test_gold_answer_is_text_that_carries_its_entry_through_pickle() -> None:
    problem = chain_sum().sample(1, 0)[0]
    assert isinstance(problem.answer, GoldAnswer) and problem.answer == problem.answer.entry["answer"]
    copy = pickle.loads(pickle.dumps(problem))
    assert (
        copy == problem
        and copy.answer.entry == problem.answer.entry
        and copy.answer.spec == problem.answer.spec
    )


def test_alphabet_covers_the_task() -> None:
    task = chain_sum()
    alphabet = set(task.alphabet)
    assert set("0123456789+-=") <= alphabet
    assert all(set(p.prompt + p.answer) <= alphabet for p in task.sample(500, 7))


def test_warm_start_cache_key_depends_on_dataset_and_levels() -> None:
    from entropyctl.models.config import ModelConfig
    from entropyctl.models.warm_start import cache_key

    cfg = ModelConfig()
    base = cache_key(cfg, chain_sum())
    assert cache_key(cfg, chain_sum()) == base
    assert (
        cache_key(cfg, ReasoningGymTask("chain_sum", levels={**CHAIN_SUM_LEVELS, 3: {"min_terms": 4}}))
        != base
    )
    assert cache_key(cfg, ReasoningGymTask("basic_arithmetic")) != base
    assert cache_key(cfg, None) not in {base, cache_key(cfg, ReasoningGymTask("basic_arithmetic"))}


# ----------------------------------------------------------------------------------------- reward

#: Datasets whose items have one gold answer on one line; several give partial credit.
ORACLE_DATASETS = [
    "chain_sum",
    "basic_arithmetic",
    "leg_counting",
    "countdown",
    "word_sorting",
    "spell_backward",
    "gsm_symbolic",
    "fraction_simplification",
]


def _perturbed(gold: str) -> list[str]:
    answers = [gold, gold + "0", "1" + gold, gold[:-1], gold + " extra", "x", "-" + gold]
    if "{" not in gold:  # reversed braces would end a \\boxed{} early
        answers.append(gold[::-1])
    return [a.strip() for a in answers if a.strip()]


def _as_reward(score: float) -> float:
    """score_answer's score as our reward: exactly 1, or clipped to [0, BELOW_ONE]."""
    return 1.0 if score == 1.0 else min(max(score, 0.0), BELOW_ONE)


@pytest.mark.parametrize("name", ORACLE_DATASETS)
def test_reward_equals_score_answer_on_gold_and_perturbed_answers(name: str, reward) -> None:
    task = ReasoningGymTask(name, seed=11, options={"size": 200}, held_out_size=8)
    dataset = task.specs[0].create()
    completions, golds, expected = [], [], []
    for problem in task.sample(4, 3):
        for answer in _perturbed(str(problem.answer)):
            truth = _as_reward(float(dataset.score_answer(answer, problem.answer.entry)))
            forms = [answer, f"Work.\n\\boxed{{{answer}}}", f"<answer>{answer}</answer>"]
            if "$" not in answer:
                forms.append(f"Let me think.\nAnswer: {answer}")
            for completion in forms:
                assert extract_final_answer(completion) == answer
                completions.append(completion)
                golds.append(problem.answer)
                expected.append(truth)
    assert reward(completions, golds) == expected
    assert expected.count(1.0) >= 4 * 3  # each gold answer, in each form, scores 1


def test_partial_credit_is_kept_and_status_counts_only_full_scores(reward) -> None:
    problem = chain_sum().sample(1, 4)[0]
    reward.reset_metrics()
    scores = reward([str(problem.answer), "9" + problem.answer, ""], [problem.answer] * 3)
    assert scores[0] == 1.0 and 0.0 < scores[1] < 1.0 and scores[2] == 0.0
    metrics = reward.metrics()
    assert (metrics["correct"], metrics["wrong"], metrics["no_answer"]) == (1, 1, 1)


def test_a_float_error_near_one_is_never_a_solve_in_float32(reward) -> None:
    import torch

    task = ReasoningGymTask("spell_backward", seed=11, options={"size": 200}, held_out_size=8)
    dataset = task.specs[0].create()
    # the gold word plus one letter: reasoning-gym means 0.8, its float sum gives 1 ± 1 ulp for some words
    pairs = [(str(p.answer) + "s", p.answer) for p in task.sample(30, 3)]
    raw = [float(dataset.score_answer(a, gold.entry)) for a, gold in pairs]
    assert any(r != 1.0 and torch.tensor(r, dtype=torch.float32).item() == 1.0 for r in raw)  # the hazard
    scores = reward([a for a, _ in pairs], [gold for _, gold in pairs])
    assert all(s == _as_reward(r) for s, r in zip(scores, raw, strict=True))
    assert (torch.tensor(scores, dtype=torch.float32) < 1.0).all()


def test_reward_refuses_plain_gold_answers(reward) -> None:
    with pytest.raises(
        ValueError, match="reward 'reasoning_gym' scores problems of data.source 'reasoning_gym'"
    ):
        reward(["12"], ["12"])


def test_late_verifier_is_killed_replaced_and_scores_zero() -> None:
    problem = chain_sum().sample(1, 0)[0]
    with ReasoningGymVerifier(1, timeout=10.0) as verifier:
        verifier.warmup()
        # the scoring process is stopped, so it cannot reply in time (a 1 µs limit was not enough on an
        # idle machine: the reply was sometimes there first): it is killed, the answer scores 0
        (worker,) = verifier._idle
        os.kill(worker.proc.pid, signal.SIGSTOP)
        assert verifier.score(str(problem.answer), problem.answer, timeout=0.5)[:2] == (0.0, "timeout")
        assert verifier.timeouts == 1
        assert verifier.score(str(problem.answer), problem.answer)[:2] == (1.0, "correct")


@pytest.fixture(scope="module")
def two_digit_sum():
    task = ReasoningGymTask("chain_sum", levels={3: CHAIN_SUM_LEVELS[3]}, held_out_size=4)
    return task.sample(1, 0)[0], task.specs[3].create()


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="0123456789-+ xy", min_size=1, max_size=8).filter(lambda s: s.strip() == s))
def test_reward_matches_score_answer_on_any_answer_text(text: str, reward, two_digit_sum) -> None:
    problem, dataset = two_digit_sum
    truth = _as_reward(float(dataset.score_answer(text, problem.answer.entry)))
    assert reward([f"\\boxed{{{text}}}", text], [problem.answer] * 2) == [truth, truth]


def test_extraction_order() -> None:
    assert extract_final_answer("a \\boxed{1} then <answer>2</answer>") == "1"
    assert extract_final_answer("<answer>x</answer> later <answer> y </answer>") == "y"
    assert extract_final_answer("so\nFinal answer: **42**") == "42"
    assert extract_final_answer("  -7 ") == "-7"
    assert extract_final_answer("   ") is None
    assert extract_final_answer("<answer>x</answer> trailing </answer>") == "x"
    assert (
        extract_final_answer("<answer>a <ANSWER>b</Answer>") == "b"
    )  # a closing tag ends the latest opening
    assert extract_final_answer("Final Answer: The final answer is 7") == "7"
    # an answer line that reads as a number is read as the math reward reads it (scored 0.5 and less
    # with the period or the check kept); a text answer keeps its commas and its period
    assert extract_final_answer("The answer is 3.") == "3"
    assert extract_final_answer("Answer: $3$.") == "3"
    assert extract_final_answer("The answer is 3. Check: done") == "3"
    assert extract_final_answer("Answer: apple, banana, cherry") == "apple, banana, cherry"
    assert extract_final_answer("Answer: The cat sat on the mat.") == "The cat sat on the mat."


def test_extraction_is_linear_in_repeated_answer_tags() -> None:
    """The lazy regex took 3.3 s on 64k characters of repeated '<answer>' (quadratic), in the trainer's
    process, before the worker's timeout applies. A linear scan of the 200k-character cut takes
    milliseconds; 2 s leaves a wide margin on a loaded machine and no quadratic scan passes it
    (~30 s at that length)."""
    text = "<answer>" * (MAX_TEXT_CHARS // 8 - 1) + "1"  # just under the cut
    start = time.perf_counter()
    assert extract_final_answer(text) == text.strip()
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------------------- training


def test_ablate_warm_starts_the_tiny_model_on_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import entropyctl.models.warm_start as warm_start
    from entropyctl.experiments import ablate

    seen = {}

    def fake_pretrain(cfg, task=None, **kwargs):
        seen["task"] = task
        return Path("unused")

    monkeypatch.setattr(warm_start, "pretrain", fake_pretrain)
    ablate._warm_start(_rg().model_dump(mode="json"), log=lambda *_: None)
    assert seen["task"].name == "chain_sum" and seen["task"].levels == (1, 2, 3)


@pytest.mark.slow
def test_tiny_model_trains_on_the_task_with_its_own_alphabet(tmp_path: Path) -> None:
    config = _rg(
        "model.tiny.hidden_size=32",
        "model.tiny.layers=1",
        "model.tiny.heads=2",
        "model.pretrain.steps=40",
        "model.pretrain.batch_size=32",
        "model.pretrain.warmup_steps=5",
        "rollout.prompts_per_step=6",
        "rollout.group_size=4",
        "eval.n_prompts=6",
        "eval.n_samples=2",
        "eval.ks=[1,2]",
        "trainer.steps=3",
        "trainer.progress_bar=false",
        "trainer.tensorboard=false",
        "trainer.save_last=false",
        f"output_dir={tmp_path}",
    )
    summary = run_training(config, tmp_path / "run", log=lambda *_: None)
    assert summary["status"] == "finished" and summary["steps"] == 3
    rows = list(csv_rows(tmp_path / "run" / "metrics.csv"))
    assert {f"acc_level_{level}" for level in (1, 2, 3)} <= set(rows[0])
    for row in rows:  # accuracy counts full scores only: never above the mean reward
        assert 0.0 <= float(row["accuracy"]) <= float(row["reward"]) + 1e-9
    from entropyctl.models.warm_start import cached_checkpoint
    from entropyctl.trainer.run import reasoning_gym_task

    task = reasoning_gym_task(config)
    directory = cached_checkpoint(config.model, task)
    metadata = json.loads((directory / "pretrain.json").read_text())
    assert metadata["task"]["name"] == "chain_sum" and metadata["task"]["levels"]["3"] == {
        k: v for k, v in CHAIN_SUM_LEVELS[3].items()
    }
    vocab = json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]
    assert set(vocab) == set(task.alphabet) | {"<pad>", "<bos>", "<eos>", "<unk>"}
    by_level = summary["before"]["by_level"]  # held-out pass@k per level, 2 problems each
    assert set(by_level) == {"1", "2", "3"} and all(v["n_problems"] == 2 for v in by_level.values())


def csv_rows(path: Path):
    import csv

    with path.open(newline="") as handle:
        yield from csv.DictReader(handle)


def test_seeded_generator_draws_like_an_int_seed() -> None:
    task = chain_sum()
    assert task.sample(10, random.Random(5)) == task.sample(10, 5)


# ----------------------------------------------------------------------------------------- the study

STUDY = REPO / "benchmarks" / "rg_ablation"


def test_committed_study_runs_are_the_shipped_configs_arms() -> None:
    """Every committed run of the reasoning-gym study is an arm × seed of configs/rg_ablation.yaml as
    ablate resolves it today, and finished."""
    import yaml

    from entropyctl.experiments.ablate import canonical_config, is_finished, parse_arms, plan_runs

    base = yaml.safe_load((REPO / "configs" / "rg_ablation.yaml").read_text())
    arms = parse_arms(base["ablation"]["arms"], where="ablation.arms")
    finished = [p for p in STUDY.glob("*/seed*") if is_finished(p)]
    seeds = sorted({int(p.name[len("seed") :]) for p in finished})
    specs = [s for s in plan_runs(base, arms, seeds, STUDY) if s.run_dir in finished]
    assert len(specs) >= 2 and {s.arm.label for s in specs} == {"fixed:alpha=0", "aer"}
    # The committed runs were made with the relative rule's previous defaults (step 0.1, proportional 1,
    # smoothing 0.5; before the error clip, docs/controllers.md); everything else is the shipped arm.
    previous = {
        "rule": "relative",
        "alpha_min": 1e-5,
        "alpha_max": 1.0,
        "step": 0.1,
        "proportional": 1.0,
        "smoothing": 0.5,
    }
    for spec in specs:
        launched = yaml.safe_load((spec.run_dir / "ablate_config.yaml").read_text())
        expected = canonical_config(spec.config)
        if launched["controller"].get("update") == previous:
            # (options added since, such as the opt-in holds, at their defaults)
            expected["controller"] = {
                **expected["controller"],
                "update": {**expected["controller"]["update"], **previous},
            }
        assert canonical_config(launched) == expected, spec.run_dir
        summary = json.loads((spec.run_dir / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == base["trainer"]["steps"], spec.run_dir


def test_docs_quote_the_committed_study_report() -> None:
    assert_docs_quote(
        STUDY / "report.md", REPO / "docs" / "ablations.md", "rg-table", 3, prefix=("| `", "Before RL")
    )
