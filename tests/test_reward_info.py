"""A reward function that takes ``info`` gets the row it scores (verl's ``compute_score(data_source, ...,
extra_info)``, TRL's dataset columns as keyword arguments): the row's columns but the prompt's, its
prompt and level — in training, in the evaluation, and through the worker process of a
``package.module:function`` reward."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from trainer_helpers import tiny_config

from entropyctl.data.loaders import load_math_dataset
from entropyctl.data.synthetic import SyntheticArithmetic
from entropyctl.rewards import get_reward
from entropyctl.rewards.base import call_reward, reward_info
from entropyctl.rewards.registry import FunctionReward

MODULE = """
import json, os

def routed(completion, answer, info):
    # verl's shape: one function, a rule per data source
    if info["data_source"] == "strict":
        return float(completion.strip() == answer)
    return 0.5 if answer in completion else 0.0

def logged(completion, answer, info):
    with open(os.environ["INFO_LOG"], "a") as f:
        f.write(json.dumps(info) + "\\n")
    return float(completion.strip() == answer)

def plain(completion, answer):
    return float(completion.strip() == answer)
"""


@pytest.fixture()
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "info_rewards_mod.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "info_rewards_mod"


def _rows(path: Path) -> list[dict[str, object]]:
    rows = [
        {"problem": f"{i}+1=", "answer": str(i + 1), "data_source": "strict" if i % 2 else "loose",
         "extra_info": {"index": i, "split": "train"}, "level": 1 + i % 3}
        for i in range(12)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_info_is_the_row_but_its_prompt_with_the_problem_text(tmp_path: Path) -> None:
    rows = _rows(tmp_path / "mixed.jsonl")
    problems = load_math_dataset(tmp_path / "mixed.jsonl", template="Q: {prompt}", keep_columns=True)
    for row, problem in zip(rows, problems, strict=True):
        info = reward_info(problem)
        assert info == {**{k: v for k, v in row.items() if k != "problem"}, "prompt": f"Q: {row['problem']}"}
    synthetic = SyntheticArithmetic(levels=[2], seed=0).held_out(1, seed=0)[0]
    assert reward_info(synthetic) == {"level": 2, "prompt": synthetic.prompt}


def test_a_parquet_value_json_cannot_hold_reaches_the_reward_as_text(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"question": ["1+1="], "answer": ["2"], "day": [datetime.date(2026, 12, 7)]})
    pq.write_table(table, tmp_path / "d.parquet")
    (problem,) = load_math_dataset(tmp_path / "d.parquet", keep_columns=True)
    assert reward_info(problem)["day"] == "2026-12-07"


def test_a_worker_function_with_info_is_routed_by_the_row(module: str, tmp_path: Path) -> None:
    _rows(tmp_path / "mixed.jsonl")
    problems = load_math_dataset(tmp_path / "mixed.jsonl", keep_columns=True)[
        :4
    ]  # loose, strict, loose, strict
    completions = [f"it is {p.answer}" for p in problems]
    routed = get_reward(f"{module}:routed")
    plain = get_reward(f"{module}:plain")
    try:
        assert routed.takes_info and not plain.takes_info
        assert call_reward(routed, completions, problems, 1) == [0.5, 0.0, 0.5, 0.0]
        assert call_reward(plain, [p.answer for p in problems], problems, 1) == [1.0] * 4
        assert routed(["2"], ["2"]) == [0.0]  # called without rows: an empty info, so a KeyError ...
    except RuntimeError as err:
        assert "KeyError" in str(err) and "data_source" in str(err)  # ... raised with its traceback
    finally:
        routed.close()
        plain.close()


def test_an_in_process_function_takes_info_by_its_parameters_name() -> None:
    seen: list[object] = []

    def with_info(completion: str, answer: str, info: dict[str, object]) -> float:
        seen.append(info["prompt"])
        return 1.0

    problem = SyntheticArithmetic(levels=[1], seed=0).held_out(1, seed=0)[0]
    assert call_reward(FunctionReward(with_info), ["x"], [problem], 1) == [1.0] and seen == [problem.prompt]
    assert call_reward(lambda c, a: [0.25] * len(c), ["x"], [problem], 1) == [0.25]  # a bare callable
    with pytest.raises(ValueError, match="2 infos"):
        FunctionReward(with_info)(["x"], ["1"], [{}, {}])


def test_training_and_evaluation_hand_the_worker_each_rows_info(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from entropyctl.trainer.run import run_training

    rows = _rows(tmp_path / "mixed.jsonl")
    log = tmp_path / "info.jsonl"
    monkeypatch.setenv("INFO_LOG", str(log))
    config = tiny_config(
        "data.source=file",
        f"data.path={tmp_path / 'mixed.jsonl'}",
        f"reward.name={module}:logged",
        "trainer.steps=1",
        "rollout.prompts_per_step=3",
        "eval.before=false",
        "eval.n_prompts=2",
        "eval.n_samples=2",
        "eval.ks=[1,2]",
    )
    run_training(config, tmp_path / "run")
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    by_prompt = {str(r["problem"]): r for r in rows}
    group, n = config.rollout.group_size, config.eval.n_samples
    assert len(seen) == 3 * group + 2 * n  # every training completion and every evaluation sample
    for info in seen:
        row = by_prompt[info["prompt"]]  # each call carries the row its completion answers
        assert info == {**{k: v for k, v in row.items() if k != "problem"}, "prompt": row["problem"]}


def test_the_rows_columns_are_kept_only_for_a_reward_that_reads_them(module: str, tmp_path: Path) -> None:
    """Every file run copied each row's other columns into its problem (a 127 MB file: +137 MB on every
    rank) whether or not a reward read them."""
    from entropyctl.config import load_run_config
    from entropyctl.trainer.run import build_data

    _rows(tmp_path / "mixed.jsonl")
    file = ["data.source=file", f"data.path={tmp_path / 'mixed.jsonl'}", "eval.n_prompts=2"]
    for reward, kept in (("math", False), (f"{module}:plain", False), (f"{module}:routed", True)):
        _, held = build_data(load_run_config(None, [*file, f"reward.name={reward}"]))
        assert all(("columns" in p.meta) is kept for p in held), reward
    shaped = load_run_config(None, [*file, f'reward.shaping=[{{name: "{module}:routed", weight: 0.1}}]'])
    assert all("data_source" in p.meta["columns"] for p in build_data(shaped)[1])


def test_a_function_that_cannot_be_called_as_a_reward_is_refused_when_the_config_loads(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verl's compute_score(data_source, solution_str, ground_truth, extra_info=None) passed the load-time
    check and failed at the first score, after the model had loaded (50 lines of Lightning traceback)."""
    from entropyctl.config import ConfigError, load_run_config

    (tmp_path / "verl_style_mod.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n"
    )
    with pytest.raises(
        ConfigError, match=r"cannot be called as fn\(completion, answer\).*info\['data_source'\]"
    ):
        load_run_config(None, ["reward.name=verl_style_mod:compute_score"])
    with pytest.raises(ConfigError, match=r"name the module, not its file: verl_style_mod:function"):
        load_run_config(None, ["reward.name=verl_style_mod.py:compute_score"])
    # TRL's habit, a bare list of reward names: each at weight 1
    shaped = load_run_config(None, [f"reward.shaping=[{module}:plain]"]).reward.shaping
    assert [(s.name, s.weight) for s in shaped] == [(f"{module}:plain", 1.0)]
    load_run_config(None, [f"reward.name={module}:routed"])  # (completion, answer, info): fine
