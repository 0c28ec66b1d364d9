"""Synthetic graded arithmetic and the JSONL/Parquet math loaders."""

from __future__ import annotations

import ast
import json
import operator
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from entropyctl.config import ConfigError
from entropyctl.data import (
    ALPHABET,
    DatasetError,
    Problem,
    SyntheticArithmetic,
    apply_chat_template,
    format_prompt,
    load_math_dataset,
)
from entropyctl.rewards.math import verify_answer

DATA = Path(__file__).parent / "data"

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _evaluate(expression: str) -> int:
    """Integer arithmetic only (+, -, *, parentheses): an oracle independent of the generator."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        raise AssertionError(f"unexpected syntax in {expression!r}: {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval").body)


# --------------------------------------------------------------------------------- synthetic


def test_alphabet_is_exactly_the_characters_used() -> None:
    assert ALPHABET == "0123456789+-*()="
    used = set()
    for problem in SyntheticArithmetic(seed=3).sample(3_000):
        used |= set(problem.prompt) | set(problem.answer)
    assert used == set(ALPHABET)


def test_same_seed_same_batches_and_different_seed_differs() -> None:
    a, b = SyntheticArithmetic(seed=7), SyntheticArithmetic(seed=7)
    assert [a.sample(50), a.sample(50)] == [b.sample(50), b.sample(50)]
    assert SyntheticArithmetic(seed=8).sample(50) != SyntheticArithmetic(seed=7).sample(50)
    # An explicit rng or int seed does not advance the instance's generator.
    c = SyntheticArithmetic(seed=7)
    assert c.sample(20, rng=1) == c.sample(20, rng=random.Random(1))
    assert c.sample(50) == SyntheticArithmetic(seed=7).sample(50)


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_each_level_answers_are_correct_and_in_range(level: int) -> None:
    problems = SyntheticArithmetic(levels=[level], seed=level).sample(500)
    assert {p.level for p in problems} == {level}
    for p in problems:
        assert p.prompt.endswith("=") and p.prompt.count("=") == 1
        value = _evaluate(p.prompt[:-1])
        assert p.answer == str(value)
        assert value >= 0
    terms = {1: (1, 1), 2: (1, 2), 3: (2, 2), 4: (2, 2)}
    if level in terms:
        low, high = terms[level]
        for p in problems:
            numbers = p.prompt[:-1].replace("-", "+").split("+")
            assert len(numbers) == (3 if level == 4 else 2)
            assert all(low <= len(n) <= high for n in numbers), p.prompt
    if level == 5:
        assert any("*" in p.prompt and "(" not in p.prompt for p in problems)
        assert any(p.prompt.startswith("(") for p in problems)


def test_levels_get_harder() -> None:
    # Mean answer length grows with level (a crude but failing-capable difficulty check).
    mean_len = {
        level: sum(len(p.prompt) for p in SyntheticArithmetic(levels=[level]).sample(300)) / 300
        for level in (1, 2, 3, 4)
    }
    assert mean_len[1] < mean_len[2] < mean_len[3] < mean_len[4]


def test_held_out_disjoint_from_training_and_deterministic() -> None:
    task = SyntheticArithmetic(seed=0)
    held = task.held_out(400, seed=1)
    assert held == task.held_out(400, seed=1)
    assert held != task.held_out(400, seed=2)
    train_prompts = {p.prompt for p in task.sample(20_000)}
    held_prompts = {p.prompt for p in held}
    assert not train_prompts & held_prompts
    assert all(task.is_held_out(p) for p in held_prompts)
    assert not any(task.is_held_out(p) for p in train_prompts)
    # Split membership depends on the prompt only: another seed's training draws avoid it too.
    other = {p.prompt for p in SyntheticArithmetic(seed=99).sample(5_000)}
    assert not other & held_prompts
    assert {p.level for p in held} == {1, 2, 3, 4, 5}
    # Distinct while possible: the big levels have no repeats.
    big = [p.prompt for p in held if p.level >= 3]
    assert len(big) == len(set(big))


def test_mixture_weights_respected() -> None:
    n = 4_000
    counts = Counter(
        p.level for p in SyntheticArithmetic(levels=[1, 3, 5], weights=[1, 2, 5], seed=0).sample(n)
    )
    for level, share in {1: 1 / 8, 3: 2 / 8, 5: 5 / 8}.items():
        assert abs(counts[level] / n - share) < 0.03, counts
    zero = Counter(p.level for p in SyntheticArithmetic(levels=[1, 2], weights=[0, 1]).sample(500))
    assert zero == {2: 500}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [1, 2]}, "one entry per level"),
        ({"weights": [1, -1, 1, 1, 1]}, "non-negative"),
        ({"weights": [0, 0, 0, 0, 0]}, "sum to more than 0"),
        ({"weights": [1, float("nan"), 1, 1, 1]}, "non-negative"),
        ({"levels": [1, 9]}, r"unknown level\(s\) \[9\]"),
        ({"levels": []}, "at least one level"),
        ({"levels": [1, 1]}, "must not repeat"),
    ],
)
def test_bad_mixture_is_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticArithmetic(**kwargs)


def test_level_names_and_problem_is_frozen() -> None:
    task = SyntheticArithmetic(levels=[2, 5])
    assert list(task.level_names) == [2, 5]
    problem = task.sample(1)[0]
    with pytest.raises(AttributeError):
        problem.answer = "0"  # type: ignore[misc]
    assert hash(problem) == hash(Problem(problem.prompt, problem.answer, problem.level, problem.id))


def test_a_split_a_level_cannot_give_is_an_error_not_a_hang() -> None:
    """Level 1 has 100 prompts: none hashes into a held-out share of 0.001, and drawing one would never
    end; it stops with the level and the fraction named."""
    with pytest.raises(ValueError, match=r"level 1: no held-out prompt .* held_out_fraction=0.001"):
        SyntheticArithmetic(levels=[1], held_out_fraction=0.001).held_out(1)
    assert len(SyntheticArithmetic(levels=[1]).held_out(3)) == 3


def test_synthetic_answers_pass_the_math_reward() -> None:
    from entropyctl.rewards import get_reward

    problems = SyntheticArithmetic(seed=1).sample(200)
    reward = get_reward("math")
    try:
        assert reward([p.answer for p in problems], [p.answer for p in problems]) == [1.0] * 200
        assert reward([p.prompt[:-1] for p in problems], [p.answer for p in problems]) == [0.0] * 200
        assert reward.verifier._started == 0  # integer fast path only
    finally:
        reward.close()


# --------------------------------------------------------------------------------- loaders


def test_gsm8k_loads_final_numbers() -> None:
    problems = load_math_dataset(DATA / "gsm8k_sample.jsonl")
    assert [p.answer for p in problems] == ["72", "10", "2000"]
    assert problems[0].prompt.startswith("Natalia sold clips")
    assert problems[2].meta["location"] == "4"  # blank line 3 is skipped, numbering is the file's


def test_math_solutions_give_boxed_answers_and_levels() -> None:
    problems = load_math_dataset(
        DATA / "math_sample.jsonl",
        level_field="level",
        template="Problem: {prompt}\nPut the answer in \\boxed{}.",
    )
    assert [p.answer for p in problems] == ["\\frac{5}{6}", "2\\sqrt{2}", "\\{-1, 1\\}"]
    assert [p.level for p in problems] == [2, 1, 0]
    assert problems[1].prompt == "Problem: Simplify $\\sqrt{8}$.\nPut the answer in \\boxed{}."


def test_a_math_solution_boxed_without_braces_loads(tmp_path: Path) -> None:
    # a few MATH solutions write "$\\boxed 5$": one such row used to fail the whole file's load
    rows = [
        {"problem": "What is 2+3?", "solution": "We add: $\\boxed 5$.", "level": "Level 1"},
        {"problem": "Halve 1.", "solution": "It is $\\boxed{\\frac{1}{2}}$.", "level": "Level 2"},
    ]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [p.answer for p in load_math_dataset(path, level_field="level")] == ["5", "\\frac{1}{2}"]


def test_dapo_chat_prompt_and_nested_answer() -> None:
    problems = load_math_dataset(DATA / "dapo_sample.jsonl")  # auto: prompt list + reward_model.ground_truth
    assert [p.answer for p in problems] == ["13", "4"]
    assert problems[0].prompt.startswith("Solve the following math problem. What is 3 * 4 + 1?")
    explicit = load_math_dataset(
        DATA / "dapo_sample.jsonl", prompt_field="prompt", answer_field="reward_model.ground_truth"
    )
    assert explicit == problems


def test_parquet_round_trip(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (DATA / "math_sample.jsonl").read_text().splitlines()]
    path = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    from_parquet = load_math_dataset(path, level_field="level")
    from_jsonl = load_math_dataset(DATA / "math_sample.jsonl", level_field="level")
    assert [(p.prompt, p.answer, p.level) for p in from_parquet] == [
        (p.prompt, p.answer, p.level) for p in from_jsonl
    ]
    bad = tmp_path / "bad.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"problem": "1+1", "answer": "2"}, {"problem": None, "answer": "3"}]), bad
    )
    with pytest.raises(DatasetError, match=r"bad\.parquet:row 1: field 'problem' is null") as info:
        load_math_dataset(bad)
    assert str(info.value).startswith(f"{bad}:row 1:")  # the path as given: two test.jsonl stay apart


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"problem": "1+1?", "answer": "2", "level": "Level 1"})


@pytest.mark.parametrize(
    ("bad_line", "kwargs", "message"),
    [
        (
            json.dumps({"problem": "1+1?", "notes": "x"}),
            {},
            "data.jsonl:3: field 'answer' missing (expected one of: answer, final_answer, solution, "
            "reward_model.ground_truth)",
        ),
        ('{"problem": "1+1?", "answer": ', {}, "data.jsonl:3: invalid JSON"),
        (json.dumps({"problem": 5, "answer": "2"}), {}, "data.jsonl:3: field 'problem' is int"),
        (
            json.dumps({"problem": "x", "answer": {"a": 1}}),
            {},
            "data.jsonl:3: field 'answer' has no final answer",
        ),
        (
            json.dumps({"problem": "x", "solution": "no box here"}),
            {},
            "data.jsonl:3: field 'solution' has no final answer",
        ),
        (
            json.dumps({"question": "x", "answer": "1"}),
            {"prompt_field": "problem"},
            "data.jsonl:3: field 'problem' missing (expected one of: problem)",
        ),
        (
            json.dumps({"problem": "x", "answer": "1", "level": "hard"}),
            {"level_field": "level"},
            "data.jsonl:3: field 'level' is 'hard'",
        ),
        (json.dumps([1, 2]), {}, "data.jsonl:3: row is a list"),
        (  # only an empty box: no answer (not the box's text as one)
            json.dumps({"problem": "x", "answer": "\\boxed{}"}),
            {},
            "data.jsonl:3: field 'answer' has no final answer",
        ),
        (
            json.dumps({"problem": "x", "final_answer": None}),
            {},
            "data.jsonl:3: field 'final_answer' is null (expected one of: answer, final_answer, solution, "
            "reward_model.ground_truth)",
        ),
        (json.dumps({"problem": "", "answer": "1"}), {}, "data.jsonl:3: field 'problem' is an empty prompt"),
        (json.dumps({"prompt": " \n", "answer": "1"}), {}, "data.jsonl:3: field 'prompt' is an empty prompt"),
    ],
)
def test_malformed_rows_name_file_line_and_field(
    tmp_path: Path, bad_line: str, kwargs: dict, message: str
) -> None:
    path = _write(tmp_path, [GOOD, GOOD, bad_line, GOOD])
    with pytest.raises(DatasetError) as info:
        load_math_dataset(path, **kwargs)
    assert str(info.value).startswith(f"{path.parent}/{message}"), str(info.value)  # the path as given
    assert info.value.location == "3"
    assert isinstance(info.value, ValueError)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        load_math_dataset(tmp_path / "missing.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"unsupported file type '\.csv'"):
        load_math_dataset(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="must be a string containing '\\{prompt\\}'"):
        load_math_dataset(DATA / "gsm8k_sample.jsonl", template="no placeholder")


def test_limit_and_numeric_answers(tmp_path: Path) -> None:
    path = _write(tmp_path, [json.dumps({"question": f"q{i}", "final_answer": i}) for i in range(5)])
    problems = load_math_dataset(path, limit=3)
    assert [(p.prompt, p.answer) for p in problems] == [("q0", "0"), ("q1", "1"), ("q2", "2")]


def test_float_answers_are_written_in_positional_digits(tmp_path: Path) -> None:
    """A JSON float answer became Python's str(): 0.00005 → '5e-05', which no completion writes and SymPy
    does not read, so the row could never be solved."""
    rows = [{"question": f"q{i}", "answer": value} for i, value in enumerate([0.00005, 1e16, 2.5, 18.0])]
    path = _write(tmp_path, [json.dumps(r) for r in rows])
    assert [p.answer for p in load_math_dataset(path)] == ["0.00005", "10000000000000000", "2.5", "18.0"]
    assert verify_answer("\\boxed{0.00005}", "0.00005") == 1.0


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_nan_or_infinite_answer_is_refused_with_the_line(tmp_path: Path, constant: str) -> None:
    """Python's json reads NaN and Infinity (JSON has neither): the answer became 'nan', which the math
    reward scored 1 against '\\boxed{nan}' as identical strings. Refused with the field and line; such a
    value in another column of the row is left alone (the first fix refused the whole file for it)."""
    path = _write(tmp_path, ['{"question": "q", "answer": 1}', f'{{"question": "q", "answer": {constant}}}'])
    with pytest.raises(DatasetError, match="data.jsonl:2: field 'answer' has no final answer \\(float"):
        load_math_dataset(path)
    path = _write(tmp_path, [f'{{"question": "q", "answer": 1, "difficulty": {constant}}}'])
    assert [p.answer for p in load_math_dataset(path)] == ["1"]


# --------------------------------------------------------------------------------- templates


class _FakeChatTokenizer:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool, tokenize: bool) -> str:
        self.calls.append((messages, add_generation_prompt, tokenize))
        body = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return body + ("<assistant>" if add_generation_prompt else "")


def test_templates() -> None:
    assert format_prompt(None, "1+1") == "1+1"
    assert format_prompt("Q: {prompt} A in \\boxed{}", "{x}") == "Q: {x} A in \\boxed{}"
    tok = _FakeChatTokenizer()
    assert apply_chat_template(tok, "2+2?", system="Be brief.") == (
        "<system>Be brief.</system><user>2+2?</user><assistant>"
    )
    assert tok.calls[0][1:] == (True, False)
    with pytest.raises(TypeError, match="no apply_chat_template"):
        apply_chat_template(object(), "x")  # type: ignore[arg-type]


def test_chat_template_with_a_real_tokenizer() -> None:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    tok.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    assert apply_chat_template(tok, "What is 2+2?") == "[user] What is 2+2?\n[assistant] "
    # keyword arguments the template reads (data.chat_template_kwargs; Qwen3's enable_thinking)
    tok.chat_template += "{% if enable_thinking is defined and not enable_thinking %}<no_think>{% endif %}"
    assert apply_chat_template(tok, "x", options={"enable_thinking": False}).endswith(
        "[assistant] <no_think>"
    )
    assert apply_chat_template(tok, "x").endswith("[assistant] ")
    from entropyctl.config import load_run_config
    from entropyctl.trainer.run import build_prompt_encoder

    seen: list[str] = []
    config = load_run_config(
        None, ["data.chat_template=true", "data.chat_template_kwargs={enable_thinking: false}"]
    )
    build_prompt_encoder(config, _Recording(tok, seen))("1+1")
    assert seen == ["[user] 1+1\n[assistant] <no_think>"]
    with pytest.raises(ConfigError, match="chat_template_kwargs.*only read when data.chat_template is true"):
        load_run_config(None, ["data.chat_template_kwargs={enable_thinking: false}"])


class _Recording:
    """A tokenizer whose call records the text it is given (the chat template is the real one's)."""

    def __init__(self, tokenizer: Any, seen: list[str]) -> None:
        self.tokenizer, self.seen = tokenizer, seen

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(*args, **kwargs)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        self.seen.append(text)
        return {"input_ids": [1]}


def test_limit_never_reads_the_rows_past_it(tmp_path: Path) -> None:
    """With limit=2, a malformed third line failed the load (the limit was checked after reading it)."""
    path = tmp_path / "lim.jsonl"
    path.write_text('{"problem": "1+1=", "answer": "2"}\n{"problem": "2+2=", "answer": "4"}\n{not json\n')
    assert [p.answer for p in load_math_dataset(path, limit=2)] == ["2", "4"]
    with pytest.raises(DatasetError, match=r"lim\.jsonl:3"):
        load_math_dataset(path, limit=3)
