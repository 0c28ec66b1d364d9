"""Math rewards: extraction, equivalence, fast path, and the hard timeout from threads and processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyctl.rewards import (
    ExactReward,
    MathReward,
    available_rewards,
    extract_answer,
    get_reward,
    verify_answer,
)
from entropyctl.rewards.answers import MAX_TEXT_CHARS, _is_prose, _last_inline_math, gold_answer
from entropyctl.rewards.math import (
    MAX_ANSWER_CHARS,
    MathVerifier,
    _number_with_units,
    check_answer,
    parse_number,
)

TIMEOUT = 1.0
# A timed-out call also kills the worker and starts (not waits for) its replacement.
MARGIN = 2.0

POWER_TOWER = "\\boxed{9^{9^{9^9}}}"  # SymPy tries to evaluate 9^(9^387420489): never finishes
HUGE_FACTORIAL = "\\boxed{(10^{10^{10}})!}"
NESTED_BRACES = "\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}"  # 100 kB
ADVERSARIAL = {  # name: (completion, gold); the ones that hang SymPy last (fewer worker restarts to wait for)
    "flat_tower": ("9^9^9^9", "\\sqrt{2}"),
    "nested_braces": (NESTED_BRACES, "5"),
    "nul_bytes": ("\x00" * 10_000 + "\\boxed{\\sqrt{\x003}}" + "\x00" * 10_000, "\\sqrt{2}"),
    "factorial": (HUGE_FACTORIAL, "5"),
    # against a symbolic gold: a numeric one catches the tower as unevaluated arithmetic (LaTeX powers
    # included) before SymPy, and it is here to hang SymPy
    "power_tower": (POWER_TOWER, "\\sqrt{2}"),
}


# Correctness checks get a generous limit (SymPy simplification can take a second on a loaded
# machine); the adversarial checks use TIMEOUT through a second reward sharing the same workers.
GENEROUS = 20.0


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    v = MathVerifier(timeout=GENEROUS)
    v.warmup()
    yield v
    v.close()


@pytest.fixture(scope="module")
def reward(verifier: MathVerifier) -> MathReward:
    return MathReward(timeout=GENEROUS, verifier=verifier)


@pytest.fixture(scope="module")
def strict_reward(verifier: MathVerifier) -> MathReward:
    return MathReward(timeout=TIMEOUT, verifier=verifier)


# --------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("19", "19"),
        (" 19\n", "19"),
        ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{\\frac{a}{\\sqrt{b}}}", "\\frac{a}{\\sqrt{b}}"),
        ("\\boxed{\\boxed{7}}", "\\boxed{7}"),
        ("\\fbox{42} done", "42"),
        ("Natalia sold 48 clips.\n#### 72", "72"),
        ("So the answer is $18$.", "18"),
        ("Final answer: 3/4", "3/4"),
        ("Reasoning 12 and 5\nAnswer: 17", "17"),
        ("The final answer is \\boxed{5}", "5"),
        ("we get $x = 4$ and then 9 apples", "x = 4"),
        ("we counted 3 apples and 11 pears", "11"),
        ("no digits at all", None),
        ("", None),
        ("\\boxed{unclosed", None),
        # a brace-less box (a few MATH solutions): to the next $, line end or unopened brace
        ("so $\\boxed 5$.", "5"),
        ("$\\boxed \\frac{1}{2}$ is it", "\\frac{1}{2}"),
        ("\\boxed{3} and then \\boxed 10.", "10"),
        ("\\boxed 10 and then \\boxed{3}", "3"),
        ("\\boxed{\\boxed 7}", "7"),
        ("So the answer is \\(\\boxed 5\\).", "5"),  # ... to the end of \(..\) or \[..\] math
        ("\\[\\boxed 5\\]", "5"),
        ("so \\boxed 3 is wrong, the answer is \\boxed 5", "5"),  # ... or to the next box: the last wins
        # a final-answer line ends at its first clause break: a check after the answer is not graded
        ("The answer is 3. Check: 3*2=6", "3"),
        ("The answer is 3 since x = 6", "3"),
        ("Answer: 3 (we need 2*3 = 6 in total)", "3"),
        ("The answer is 12, since 3*4 = 12.", "12"),
        ("the answer is $x = 6$; done", "x = 6"),
        ("The answer is \\frac{1}{2}, i.e. half", "\\frac{1}{2}"),
        # ... and not inside a number, a list of values or braces
        ("The answer is 1,000.", "1,000"),
        ("The answer is 3.5.", "3.5"),
        ("The answer is 2, 3", "2, 3"),
        ("Final answer: \\frac{1, since}{2}", "\\frac{1, since}{2}"),
        # Minerva's format (lm-eval's minerva_math): the inner marker's answer, not the sentence
        ("Final Answer: The final answer is $18$. I hope it is correct.", "18"),
        ("Final answer: the answer is 18", "18"),
        ("**Final Answer:** **The answer is 7**", "7"),
        ("Answer: 5. The answer is checked below", "5"),  # a marker after the clause break is not followed
        # "and" before prose ends the answer; a list's ", and" does not, and reads as a comma
        ("The answer is 42 and we are done.", "42"),
        ("The answer is 1, 2, and 3.", "1, 2, 3"),
        ("The answer is -2, -1, or 4", "-2, -1, 4"),
        ("The answer is x and y", "x and y"),
        # dollar amounts are no inline math: the prose between two of them is skipped
        ("She sells 9 eggs for $2 each, so she makes 9 * $2 = $18 every day.", "18"),
        ("She earns $5 per hour. After 4 hours she has $20.", "20"),
        ("The total is $\\text{18 dollars}$", "\\text{18 dollars}"),  # words in braces are math's own
        ("so $\\sin x = 1$ at the top", "\\sin x = 1"),
        # an escaped brace is text: a piecewise answer's \left\{ ... \right. no longer leaves its box open
        (
            "so \\boxed{f(x)=\\left\\{ \\begin{array}{ll} x & x>0 \\\\ 0 & x\\le 0 \\end{array} \\right.} is it",
            "f(x)=\\left\\{ \\begin{array}{ll} x & x>0 \\\\ 0 & x\\le 0 \\end{array} \\right.",
        ),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ],
)
def test_extract_answer_order(text: str, expected: str | None) -> None:
    got = extract_answer(text)
    if expected == "\\boxed{7}":
        assert got in ("\\boxed{7}", "7")  # outermost box content (which holds the inner box)
    else:
        assert got == expected


def test_extract_answer_last_number_is_optional() -> None:
    assert extract_answer("we counted 3 apples and 11 pears", last_number=False) is None


def test_extract_is_linear_on_huge_brace_input() -> None:
    text = "\\boxed{" * 20_000 + "x"  # many unclosed boxes: a quadratic scan would take minutes
    start = time.perf_counter()
    extract_answer(text)
    assert time.perf_counter() - start < 2.0


def test_parse_number_forms() -> None:
    assert parse_number("1,000") == 1000
    assert parse_number("-3.50") == parse_number("-7/2")
    assert parse_number("\\dfrac{1}{2}") == parse_number("0.5")
    assert parse_number("\\$18.") == 18
    assert parse_number("x") is None
    assert parse_number("1/0") is None
    assert parse_number("(-5)") == parse_number("- 5") == -5
    assert parse_number("(5,125)") is None and parse_number("(0,100)") is None  # pairs, not thousands


# --------------------------------------------------------------------------------- correctness


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("19", "19"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("The answer is 1/2.", "0.5"),
        ("\\boxed{\\dfrac{1}{2}}", "1/2"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("#### 18", "Janet has 16 - 3 - 4 = 9 eggs... #### 18"),
        ("so \\boxed{\\pi/2}", "\\frac{\\pi}{2}"),
        ("\\boxed{(x+1)^2}", "x^2+2x+1"),
        ("\\boxed{\\{1,2\\}}", "\\{2,1\\}"),
        ("\\boxed{[1,2)}", "[1,2)"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{18.0}", "18"),
        ("\\boxed{12+7=19}", "19"),  # a worked line ending in its value
        ("\\boxed{a = b = 19}", "19"),
        ("x = 12+7 = 19", "19"),
        ("\\boxed{2^4+3=19}", "19"),
        ("\\boxed{12 \\times 7 = 84}", "84"),
        ("\\boxed{\\frac{38}{2} = 19}", "19"),
        ("so 3*6+1 = 19.", "19"),
        ("Final Answer: The final answer is $18$. I hope it is correct.", "18"),
        ("She sells 9 eggs for $2 each, so she makes 9 * $2 = $18 every day.", "18"),
        ("The answer is 42 and we are done.", "42"),
        ("The answer is 1, 2, and 3.", "1, 2, 3"),
        # a number and at most two units (math-verify knows "cm" and "apples", not "dollars" or "km/h")
        ("The answer is $18$ dollars.", "18"),
        ("#### 18 dollars", "18"),
        ("\\boxed{18 dollars}", "18"),
        ("\\boxed{5 km/h}", "5"),
        ("\\boxed{18\\text{ cm}}", "18"),
        ("\\boxed{\\$18}", "18"),
        # a spaced sign, one pair of parentheses, and digit groups spaced the LaTeX ways
        ("\\boxed{- 5}", "-5"),
        ("\\boxed{(-5)}", "-5"),
        ("\\boxed{1\\,000}", "1000"),
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{1~000}", "1000"),
        ("\\boxed{12 345}", "12345"),
        # a review of the rules above: each of these scored 0 under their first version
        ("\\boxed{(5, 125)}", "\\boxed{(5,125)}"),  # a pair is no thousands number
        ("The answer is $(0, 100)$.", "(0,100)"),
        ("The answer is 12, and 12 is divisible by 3.", "12"),  # ", and" before prose still ends it
        ("Final answer: 7, and 7 is prime.", "7"),
        ("The answer is $12$, and $12 > 10$ as needed.", "12"),
        ("The answer is 5, and (as a check) 5*2=10", "5"),
        (
            "The triangle has $b = 6$ and $h = 4$, so $area = base \\times height / 2 = 12$.",
            "12",
        ),  # math, not prose
        ("Speed is $d = 120$ miles. So $speed = distance / time = 120 / 2 = 60$", "60"),
        ("\\boxed{50\\%}", "0.5"),  # a percent is no unit: math-verify reads it
        ("\\boxed{25\\%}", "\\frac{1}{4}"),
        ("Answer: 5 percent", "0.05"),
        ("Final Answer: The final answer is $18$ I hope it is correct.", "18"),  # Minerva, no period
    ],
)
def test_equivalent_forms_score_one(reward: MathReward, completion: str, gold: str) -> None:
    assert reward([completion], [gold]) == [1.0]


@pytest.mark.parametrize(
    ("completion", "gold", "status"),
    [
        ("18", "19", "wrong"),
        ("\\boxed{\\frac{1}{3}}", "0.5", "wrong"),
        ("\\boxed{(1,2]}", "[1,2)", "wrong"),
        ("\\boxed{x+2}", "x+1", "wrong"),
        ("12+7", "19", "wrong"),  # echoing the prompt is not an answer
        ("\\boxed{12+7=}", "19", "wrong"),
        ("\\boxed{19 = 12+7}", "19", "wrong"),  # the last side is the answer, and it is not evaluated
        ("\\boxed{12+7=20}", "19", "wrong"),
        ("\\boxed{7 = 19}", "19", "wrong"),  # a false equation is no answer
        ("\\boxed{12+7 = 20 = 19}", "19", "wrong"),
        ("\\boxed{x = 7 = 19}", "19", "wrong"),  # a name before it does not hide it from the rule
        ("\\boxed{12 \\times 7 = 19}", "19", "wrong"),  # nor LaTeX operators, fractions or spacing
        ("\\boxed{\\frac{14}{2} = 19}", "19", "wrong"),
        ("\\boxed{$7\\,=\\,19$}", "19", "wrong"),
        ("\\boxed{x=5, y=19}", "19", "wrong"),  # two equations: not read as the last side's number
        ("\\boxed{x \\le 19}", "19", "wrong"),
        ("I do not know", "19", "no_answer"),
        # units are words after a space: not a product (5x), a constant (2 pi) or more numbers
        ("\\boxed{5x}", "5", "wrong"),
        ("\\boxed{2 pi}", "2", "wrong"),
        ("\\boxed{2 \\sqrt{2}}", "2", "wrong"),
        ("\\boxed{18 and 19}", "18", "wrong"),
        ("\\boxed{5 more than x}", "5", "wrong"),
        ("\\boxed{18 dollars}", "19", "wrong"),
        ("\\boxed{(12+7)}", "19", "wrong"),  # parentheses around unevaluated arithmetic
        ("\\boxed{1 00}", "100", "wrong"),  # a space is a digit-group separator only before three digits
        ("\\boxed{5125}", "(5,125)", "wrong"),  # the gold pair is not 5125
        ("The answer is 100.", "(0,100)", "wrong"),
        ("Answer: 12 or more", "12", "wrong"),  # connectives, scales and letter pairs are no units
        ("Answer: 5 xy", "5", "wrong"),
        ("Answer: 2 hundred", "2", "wrong"),
        ("Answer: 4 dozen", "4", "wrong"),
        ("Answer: 7 and", "7", "wrong"),
    ],
)
def test_wrong_answers_score_zero(verifier: MathVerifier, completion: str, gold: str, status: str) -> None:
    result = check_answer(completion, gold, GENEROUS, verifier=verifier)
    assert result.score == 0.0
    assert result.status == status


def test_integer_fast_path_never_starts_a_worker() -> None:
    verifier = MathVerifier(timeout=TIMEOUT)
    try:
        start = time.perf_counter()
        results = [check_answer(str(i % 50), str(i % 37), verifier=verifier) for i in range(2_000)]
        elapsed = time.perf_counter() - start
        assert verifier._started == 0
        assert sum(r.score for r in results) == sum(1 for i in range(2_000) if i % 50 == i % 37)
        assert elapsed / 2_000 < 200e-6  # microseconds per answer (loose: shared CPU)
    finally:
        verifier.close()


def test_arithmetic_sides_are_evaluated_exactly_or_not_at_all() -> None:
    from entropyctl.rewards.math import _evaluate_arithmetic

    cases = {"12+7": 19, "2^3^2": 512, "2**10": 1024, "(1+2)*3/4": Fraction(9, 4), "-(-3)": 3, ".5+.5": 1}
    cases |= {"2^-2": Fraction(1, 4), " 7 ": 7, "1.25*4": 5}
    for text, value in cases.items():
        assert _evaluate_arithmetic(text) == value, text
    # no value: a division by zero, a non-integer or large exponent, unbalanced or too deep parentheses,
    # two numbers side by side, a missing operand
    for text in ("1/0", "2^0.5", "2^65", "(1", "1)", "3 4", "1+", "(" * 40 + "1" + ")" * 40, "9^64^64"):
        assert _evaluate_arithmetic(text) is None, text


def test_an_equation_ending_in_a_number_takes_the_fast_path() -> None:
    verifier = MathVerifier(timeout=TIMEOUT)
    try:
        for text, expected in (("\\boxed{12+7=19}", 1.0), ("x = 19", 1.0), ("12+7=20", 0.0), ("12+7=", 0.0)):
            assert check_answer(text, "19", verifier=verifier).score == expected, text
        assert verifier._started == 0
    finally:
        verifier.close()


def test_overlong_answer_is_parse_error_without_sympy() -> None:
    verifier = MathVerifier(timeout=TIMEOUT)
    try:
        result = check_answer("\\boxed{" + "x+" * MAX_ANSWER_CHARS + "1}", "x", verifier=verifier)
        assert result.status == "parse_error"
        assert verifier._started == 0
    finally:
        verifier.close()


# --------------------------------------------------------------------------------- hard timeout


def _timed_adversarial(
    r: MathReward, names: tuple[str, ...] = tuple(ADVERSARIAL)
) -> dict[str, tuple[float, float]]:
    out = {}
    for name in names:
        text, gold = ADVERSARIAL[name]
        r.warmup()  # a replacement worker's start-up is not part of the answer's time budget
        start = time.perf_counter()
        score = r([text], [gold])[0]
        out[name] = (score, time.perf_counter() - start)
    return out


def _check_adversarial(
    results: dict[str, tuple[float, float]], names: tuple[str, ...] = tuple(ADVERSARIAL)
) -> None:
    assert set(results) == set(names)
    for name, (score, seconds) in results.items():
        assert score == 0.0, name
        assert seconds < TIMEOUT + MARGIN, (name, seconds)


def test_adversarial_inputs_from_main_thread(strict_reward: MathReward, reward: MathReward) -> None:
    strict_reward.reset_metrics()
    timeouts_before = strict_reward.verifier.timeouts
    _check_adversarial(_timed_adversarial(strict_reward))
    metrics = strict_reward.metrics()
    assert metrics["timeout"] >= 2  # the power tower and the factorial hang SymPy
    assert strict_reward.verifier.timeouts - timeouts_before == metrics["timeout"]
    assert metrics["total"] == len(ADVERSARIAL)
    # The pool recovered: a normal symbolic check still works after the kills.
    assert reward(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"]) == [1.0]


THREAD_CASES = ("flat_tower", "nested_braces", "nul_bytes", "power_tower")


def test_adversarial_inputs_from_worker_thread(strict_reward: MathReward) -> None:
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["results"] = _timed_adversarial(strict_reward, THREAD_CASES)
        except BaseException as exc:  # surface the thread's failure in the test
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not thread.is_alive()
    assert "error" not in box, box.get("error")
    _check_adversarial(box["results"], THREAD_CASES)  # type: ignore[arg-type]


def test_concurrent_threads_share_the_pool() -> None:
    r = MathReward(timeout=2 * TIMEOUT, num_workers=2)
    try:
        scores: list[list[float]] = []
        threads = [
            threading.Thread(
                target=lambda: scores.append(
                    r(["\\boxed{\\sqrt{8}}", POWER_TOWER], ["2\\sqrt{2}", "\\sqrt{2}"])
                )
            )
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert scores == [[1.0, 0.0]] * 2
        assert r.metrics()["timeout"] == 2
    finally:
        r.close()


# In a child process: one input that hangs SymPy, one that is huge, one with NUL bytes.
PROCESS_CASES = ("nested_braces", "nul_bytes", "power_tower")


def _process_target(queue: mp.Queue, inherited: MathReward | None) -> None:
    try:
        r = inherited if inherited is not None else MathReward(timeout=TIMEOUT)
        r.reset_metrics()
        results = _timed_adversarial(r, PROCESS_CASES)
        queue.put(("ok", results, r.metrics()["timeout"], mp.current_process().daemon))
        r.close()
    except BaseException as exc:
        queue.put(("error", repr(exc), 0, None))


@pytest.mark.parametrize(
    ("method", "daemon", "inherit"),
    [("spawn", True, False), ("fork", True, True)],
    ids=["daemonic-spawn", "daemonic-fork-inherited-pool"],
)
def test_adversarial_inputs_from_worker_process(
    strict_reward: MathReward, reward: MathReward, method: str, daemon: bool, inherit: bool
) -> None:
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    parent_workers = [w.proc.pid for w in reward.verifier._idle]
    proc = ctx.Process(
        target=_process_target, args=(queue, strict_reward if inherit else None), daemon=daemon
    )
    proc.start()
    kind, results, timeouts, was_daemon = queue.get(timeout=90)
    proc.join(10)
    assert kind == "ok", results
    assert was_daemon is daemon
    _check_adversarial(results, PROCESS_CASES)
    assert timeouts >= 1  # the power tower
    # The child never touched the parent's workers: they are alive and still answer.
    for pid in parent_workers:
        os.kill(pid, 0)
    assert reward(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"]) == [1.0]


def test_dead_worker_is_replaced_and_close_stops_workers() -> None:
    r = MathReward(timeout=GENEROUS)
    r.warmup()
    victim = r.verifier._idle[0].proc
    victim.kill()  # e.g. the OOM killer
    victim.wait()
    assert r(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"]) == [1.0]
    replacement = r.verifier._idle[0].proc
    assert replacement.pid != victim.pid
    r.close()
    assert replacement.poll() is not None
    with pytest.raises(RuntimeError, match="closed"):
        r(["\\boxed{\\sqrt{8}}"], ["2\\sqrt{2}"])
    assert r(["19"], ["19"]) == [1.0]  # the in-process fast path needs no worker


def test_nul_bytes_are_stripped(reward: MathReward) -> None:
    assert reward(["\x00\\boxed{\\sqrt{\x008}}\x00"], ["2\\sqrt{2}"]) == [1.0]
    assert reward(["1\x009"], ["19"]) == [1.0]


def test_verify_answer_module_function() -> None:
    assert verify_answer("\\boxed{\\frac{2}{4}}", "0.5") == 1.0
    assert verify_answer("7", "8") == 0.0


# --------------------------------------------------------------------------------- registry


def test_registry_names_and_metrics() -> None:
    assert {"math", "exact"} <= set(available_rewards())
    exact = get_reward("exact")
    assert isinstance(exact, ExactReward)
    assert exact(["The answer is 19.", "19", "  ", "20"], ["19", "19", "19", "19"]) == [1.0, 1.0, 0.0, 0.0]
    m = exact.metrics()
    assert (m["correct"], m["wrong"], m["no_answer"], m["total"]) == (2, 1, 1, 4)
    exact.reset_metrics()
    assert exact.metrics()["total"] == 0
    math_reward = get_reward("math", timeout=2.0)
    try:
        assert isinstance(math_reward, MathReward) and math_reward.timeout == 2.0
        assert math_reward(["19", "x"], ["19", "19"]) == [1.0, 0.0]
        assert math_reward.metrics()["no_answer"] == 1
    finally:
        math_reward.close()


def test_registry_function_path() -> None:
    fn = get_reward("operator:eq")  # any (completion, answer) -> float-like callable
    try:
        assert fn(["a", "b"], ["a", "a"]) == [1.0, 0.0]
        assert fn.metrics()["correct"] == 1
    finally:
        fn.close()


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("nope", r"unknown reward 'nope'; expected one of \['exact', 'math'"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("operator:no_such_fn", "has no attribute"),
        ("math:pi", "not callable"),
        (":f", "malformed"),
    ],
)
def test_registry_errors(name: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_reward(name)


def test_batch_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        get_reward("exact")(["1", "2"], ["1"])


# ------------------------------------------------------------------ custom rewards and timeouts

CUSTOM = """
import time

def hang(completion, answer):
    while True:
        time.sleep(0.1)

def equal(completion, answer):
    return float(completion.strip() == answer.strip())

def boom(completion, answer):
    raise KeyError("no such thing")
"""


@pytest.fixture()
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_rewards_mod.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards_mod"


def test_custom_reward_that_never_returns_times_out_and_is_counted(custom_module: str) -> None:
    hang = get_reward(f"{custom_module}:hang", timeout=0.5)
    try:
        hang.warmup()  # the worker's start-up is not charged to an answer
        start = time.perf_counter()
        assert hang(["1", "2"], ["1", "2"]) == [0.0, 0.0]
        elapsed = time.perf_counter() - start
        assert 2 * 0.5 <= elapsed < 2 * 0.5 + 2 * MARGIN
        assert hang.metrics()["timeout"] == 2
    finally:
        hang.close()
    equal = get_reward(f"{custom_module}:equal", timeout=5, num_workers=2)
    try:
        assert equal(["1", "2", " 3 "], ["1", "1", "3"]) == [1.0, 0.0, 1.0]
        assert equal.metrics()["correct"] == 2
    finally:
        equal.close()


def test_custom_reward_error_is_raised_with_its_traceback(custom_module: str) -> None:
    boom = get_reward(f"{custom_module}:boom")
    try:
        with pytest.raises(RuntimeError, match="(?s)raised in its worker process.*KeyError.*no such thing"):
            boom(["1"], ["1"])
    finally:
        boom.close()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.0, -1.0, "soon"])
def test_reward_timeout_must_be_finite_and_positive(bad: object, custom_module: str) -> None:
    with pytest.raises(ValueError, match="timeout: must be a"):
        get_reward("math", timeout=bad)
    with pytest.raises(ValueError, match="timeout: must be a"):
        get_reward(f"{custom_module}:equal", timeout=bad)


# --------------------------------------------------------------- extraction in linear time

_OLD_INLINE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)


def _regex_last_inline(text: str) -> str | None:
    last = None
    for match in _OLD_INLINE.finditer(text):
        last = match
    return None if last is None else next(g for g in last.groups() if g is not None)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="$\\()[]a1 \n", max_size=40))
def test_linear_inline_math_scan_equals_the_regex(text: str) -> None:
    # the regex is the oracle (quadratic on unclosed openers, exact on short strings)
    assert _last_inline_math(text) == _regex_last_inline(text)


def _regex_last_inline_math_not_prose(text: str) -> str | None:
    last = None
    for match in _OLD_INLINE.finditer(text):
        dollar = match.group(1) is not None or match.group(2) is not None
        content = next(g for g in match.groups() if g is not None)
        last = None if dollar and _is_prose(content) else content  # a prose span voids the ones before
    return last


PROSE_PIECES = [
    "$",
    "$",
    "$$",
    "abc de",
    "2 abc de",  # a dollar amount's prose: opens with a digit
    "$2 abc de",
    "=",
    "\\(",
    "\\)",
    "\\[",
    "\\]",
    "{",
    "}",
    "abc",
    "de",
    "\\sin",
    " ",
    "1",
    "\n",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PROSE_PIECES), max_size=16).map("".join))
def test_skipping_prose_spans_keeps_the_spans_and_drops_only_prose(text: str) -> None:
    # the same spans as the regex; the last one after the last $-span of prose
    assert _last_inline_math(text, skip_prose=True) == _regex_last_inline_math_not_prose(text)


ADVERSARIAL_PIECES = [
    "\\(", "\\[", "$", "$$", "{", "}", "\\boxed{", "\\fbox{", "\\boxed ", "\\fbox\t", "final answer", "the answer is ",
    "answer:", "####", "\n", " ", "\t", "1", "1,", ".5", "x", "\\frac{1}{2}", "**",
]  # fmt: skip


#: CPU time per character allowed for extraction. Measured here: 0.1-1 µs/char for every pattern at
#: the 200k-character cut; the quadratic regex scan it replaces took ~750 µs/char there (150 s). 20
#: µs/char (4 s at the cut) leaves >20x headroom on both sides, so neither a loaded machine nor a
#: slower CPU makes it flake, and no quadratic scan can pass it.
MAX_SECONDS_PER_CHAR = 20e-6


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from(ADVERSARIAL_PIECES), min_size=1, max_size=6), st.booleans())
def test_extraction_time_per_character_is_bounded_on_adversarial_text(pieces: list[str], tail: bool) -> None:
    unit = "".join(pieces)
    text = unit * (MAX_TEXT_CHARS // len(unit)) + (" 7" if tail else "")
    start = time.thread_time()  # CPU time of this thread: time spent descheduled is not counted
    extract_answer(text)
    seconds = time.thread_time() - start
    assert seconds <= MAX_SECONDS_PER_CHAR * len(text), (unit, seconds)


CHAIN_PIECES = [
    "=",
    "1",
    "9",
    " ",
    "x",
    "(",
    ")",
    "+",
    "*",
    "^",
    "/",
    ",",
    "f",
    "\\frac{",
    "{",
    "}",
    "\\times",
    "$",
]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(CHAIN_PIECES), min_size=1, max_size=6))
def test_reading_an_equation_chain_is_linear_at_the_answer_cap(pieces: list[str]) -> None:
    """The last-side rule runs on every extracted answer up to MAX_ANSWER_CHARS: the same CPU time per
    character as extraction (a backtracking regex would take seconds at the cap)."""
    from entropyctl.rewards.math import _final_side_number

    unit = "".join(pieces)
    text = unit * (MAX_ANSWER_CHARS // len(unit))
    start = time.thread_time()
    _final_side_number(text)
    assert time.thread_time() - start <= MAX_SECONDS_PER_CHAR * len(text), unit


def test_unclosed_inline_math_at_the_length_cap_is_fast() -> None:
    # 200k characters of unclosed \( took ~150 s with the regex scan
    start = time.perf_counter()
    assert extract_answer("\\(" * 100_000, last_number=False) is None
    assert time.perf_counter() - start < 5.0


def test_extraction_time_counts_inside_the_timeout() -> None:
    text = "\\(" * 100_000 + " 7"
    result = check_answer(text, "7", timeout=1e-6)
    assert result.status == "timeout" and result.score == 0.0


@pytest.mark.parametrize(
    ("text", "gold", "reward"),
    [
        ("The answer is 3. Check: 3*2=6", "6", 0.0),  # the check's 6 was graded: a wrong answer scored
        ("The answer is 3. Check: 3*2=6", "3", 1.0),  # ... and the right one did not
        ("Answer: 3 (we need 2*3 = 6 in total)", "6", 0.0),
        ("The answer is 12, since 3*4 = 12.", "12", 1.0),
    ],
)
def test_a_check_written_after_the_answer_is_not_graded(text: str, gold: str, reward: float) -> None:
    assert verify_answer(text, gold) == reward


@pytest.mark.parametrize(
    ("completion", "gold", "status"),
    [
        # scored 1 before: the policy could learn them
        ("The answer is $18. She had $5 left over.", "5", "wrong"),  # a dollar sign opened "math" to the end
        ("\\boxed{12 \\times 7}", "84", "wrong"),  # LaTeX arithmetic: an echo, like 12*7
        ("\\boxed{84 = 12 \\times 7}", "84", "wrong"),
        ("\\boxed{2^{3}}", "8", "wrong"),
        ("\\boxed{\\;12+7}", "19", "wrong"),
        ("\\boxed{12+7\\text{ dollars}}", "19", "wrong"),
        ("The answer is 5 squared.", "5", "wrong"),  # words that are no unit
        ("The answer is 3 fifths.", "3", "wrong"),
        ("The answer is 2 millions.", "2", "wrong"),
        ("\\boxed{18\\text{million}}", "18", "wrong"),  # the word inside \text{} is read too
        ("\\boxed{0,100}", "100", "wrong"),  # a leading zero group is no thousands group
        ("**Final Answer**: x = 12+7 = 20", "20", "wrong"),  # the docs' false chain, behind a colon
        # scored 0 before
        ("The answer is $18. She had $5 left over.", "18", "correct"),
        ("the answer is \\$18. She spent \\$20 in total", "18", "correct"),
        ("**Final Answer**: (-5)", "-5", "correct"),
        ("**Final Answer**: 1\\,000", "1000", "correct"),
        ("#### 18\nI think the answer is reasonable.", "18", "correct"),  # a verdict is no answer
        ("So the answer is 18.\n\nLet me double-check: yes, the answer is correct.", "18", "correct"),
        ("#### Step 1: Add\n#### Step 2: Multiply\n6 * 3 = 18, so she pays 18 dollars.", "18", "correct"),
        ("I will put the answer in \\boxed{}.\nThe answer is 18.", "18", "correct"),  # an empty box
        ("The answer is [0, 1) \\cup (2, 3].", "[0, 1) \\cup (2, 3]", "correct"),  # an interval's (
        # what the first fixes broke (a review of them), kept as they were
        ("\\boxed{36\\text{ cm}^2}", "36", "correct"),  # a unit's exponent is no arithmetic
        ("\\boxed{5\\,\\text{cm}}", "5", "correct"),
        ("\\boxed{{36}}", "36", "correct"),
        ("\\boxed{\\left( -5 \\right)}", "-5", "correct"),
        ("\\boxed{2^{10} = 1024}", "1024", "correct"),  # a worked line in braces
        ("\\boxed{3 \\times 10^8}", "300000000", "correct"),  # scientific notation is a number
        ("The answer is 7 fifth graders.", "7", "correct"),  # an ordinal beside a unit
        ("36 units squared", "36", "correct"),
        ("#### True", "True", "correct"),  # a word answer ends the text: no heading
        ("#### x^2+1", "x^2+1", "correct"),
        ("#### B. I hope it is correct.", "B", "correct"),
        ("the answer is 8.5, not an integer.\nSo 17 is prime, and the answer is yes.", "yes", "correct"),
        ("The answer is 5.\nthe answer is six.", "5", "wrong"),  # only judgements are skipped
        ("The final answer is $x \\in (0, 1)", "(0,1)", "correct"),  # an unclosed $ before a letter is math
        # unchanged
        ("The answer is 18 dollars.", "18", "correct"),
        ("\\boxed{18\\text{ cm}}", "18", "correct"),
        ("\\boxed{1,000}", "1000", "correct"),
        ("Answer: 42 (approximately)", "42", "correct"),
        ("#### B", "B", "correct"),
        ("The answer is $x = 5$. Check: 5*2=10", "5", "correct"),
    ],
)
def test_the_reviews_false_positives_and_negatives(completion: str, gold: str, status: str) -> None:
    assert check_answer(completion, gold, timeout=10).status == status


@pytest.mark.parametrize(
    ("completion", "gold", "status"),
    [
        # scored 0 before (a second review, 2026-12-07; math-verify scores each 1)
        ("\\boxed{10,\\!000}", "10000", "correct"),  # MATH's thousands comma
        ("\\boxed{1,\\!234,\\!567}", "1234567", "correct"),
        ("\\boxed{3,\\!000\\text{ dollars}}", "3000", "correct"),
        ("\\boxed{2\\frac{1}{2}}", "2.5", "correct"),  # a mixed number, not unevaluated arithmetic
        ("\\boxed{1\\tfrac{3}{4}}", "1.75", "correct"),
        ("\\boxed{-1\\frac{1}{2}}", "-1.5", "correct"),
        ("\\boxed{3 \\dfrac{1}{3}}", "\\frac{10}{3}", "correct"),
        ("\\boxed{\\left(\\frac{1}{2}\\right)}", "0.5", "correct"),
        ("\\boxed{{\\frac{1}{2}}}", "0.5", "correct"),
        ("\\boxed{\\frac{1}{2}\\,}", "0.5", "correct"),
        ("\\boxed{\\frac{1.5}{3}}", "0.5", "correct"),
        ("The final answer is \\( (3, -2) \\).", "(3,-2)", "correct"),  # \( ... \) is math, as $...$
        ("The answer is \\[ (3, -2) \\]", "(3,-2)", "correct"),
        ("The answer is \\( x \\in (1, 2] \\).", "(1,2]", "correct"),
        ("The answer is \\( 2 (x+1) \\).", "2x+2", "correct"),
        # two spans are not one around the whole answer (a review of the first fix: '1\\), \\(2' scored 0)
        ("The answer is \\(1\\), \\(2\\).", "1, 2", "correct"),
        ("The answer is \\(1\\) and \\(2\\).", "1, 2", "correct"),
        # kept as they were
        ("\\boxed{0,\\!100}", "100", "wrong"),  # a leading zero group is no thousands group
        ("\\boxed{2\\frac{3}{2}}", "3.5", "wrong"),  # an improper fraction: no mixed number
        ("\\boxed{\\frac{12+7}{1}}", "19", "wrong"),  # unevaluated arithmetic in a fraction
        ("The answer is \\(5\\). Check: 2+3 = 5", "5", "correct"),
        ("The answer is \\(4\\). Check: 2+3 = 5", "5", "wrong"),  # the check after \) is not graded
    ],
)
def test_the_second_reviews_false_negatives(completion: str, gold: str, status: str) -> None:
    assert check_answer(completion, gold, timeout=10).status == status


def test_a_latex_line_break_is_no_math_opener() -> None:
    """``\\\\[2pt]`` (a line break with its spacing) is not ``\\[``: the clause still ends at its break."""
    assert extract_answer("The answer is \\\\[2pt] 5. Then \\] x") == "\\\\[2pt] 5"
    assert extract_answer("The answer is $1$ and $2$.") == "$1$ and $2$"  # two spans: both kept


def test_a_gsm8k_gold_never_reads_thousands_after_a_leading_zero() -> None:
    """The docs' rule (``0,100`` is a list, not 100) holds for gold answers as for predictions."""
    assert gold_answer("#### 0,100") == "0,100"
    assert gold_answer("#### 1,000") == "1000" and gold_answer("#### -12,345.5") == "-12345.5"


def test_the_units_rule_is_bounded_on_a_long_run_of_letters() -> None:
    """The units regex was cubic in a run of letters: an answer of 990 letters and a digit held the trainer
    process 21.9 s (the worker's timeout does not cover it)."""
    started = time.perf_counter()
    result = check_answer("Let me think.\n\\boxed{" + "x" * 990 + "1}", "18", timeout=5)
    assert result.status in ("wrong", "parse_error", "timeout")
    assert time.perf_counter() - started < 5 + MARGIN
    started = time.perf_counter()
    assert _number_with_units("a" * 5000 + "1") is None and time.perf_counter() - started < 0.5
