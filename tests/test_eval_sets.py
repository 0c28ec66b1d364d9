"""Several held-out sets (``data.eval_path`` as a list; verl's ``val_files``): each file is a set with its
own pass@k beside the pass@k over all of them — in the run's evaluations, in `entropyctl evaluate`
(`--data run` and `--data A,B`) and in `entropyctl report`."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import tiny_config

from entropyctl import cli
from entropyctl.config import ConfigError, load_run_config
from entropyctl.config.run import eval_set_names
from entropyctl.trainer.evaluation import (
    ProblemOutcome,
    format_eval_table,
    pass_at_k,
    summarize_pass_at_k,
)
from entropyctl.trainer.run import build_data
from entropyctl.trainer.run_dir import run_fingerprint

REPO = Path(__file__).resolve().parents[1]
OWN_DATA = REPO / "examples" / "own_data" / "sums.jsonl"  # 120 rows, levels 1-3


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"problem": p, "answer": a}) + "\n" for p, a in rows))
    return path


def _sums(path: Path, start: int, n: int) -> Path:
    return _write(path, [(f"{i}+1=", str(i + 1)) for i in range(start, start + n)])


# ------------------------------------------------------------------------------------ the config


@pytest.mark.parametrize(
    ("paths", "names"),
    [
        (["gsm8k.jsonl", "math500.parquet"], ["gsm8k", "math500"]),
        (["a/gsm8k/test.jsonl", "b/math/test.jsonl"], ["gsm8k/test", "math/test"]),
        (["x/test.jsonl", "y/test.jsonl", "y/dev.jsonl"], ["x/test", "y/test", "y/dev"]),
        (["a/b/test.jsonl", "c/b/test.jsonl"], ["a/b/test", "c/b/test"]),
        (["test.jsonl", "test.parquet"], ["test.jsonl", "test.parquet"]),  # only the suffix differs
    ],
)
def test_each_file_is_named_by_as_much_of_its_path_as_tells_them_apart(
    paths: list[str], names: list[str]
) -> None:
    assert eval_set_names(paths) == names


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[]", "an empty list names no held-out set"),
        ("[a.jsonl,a.jsonl]", "'a.jsonl' is listed twice"),
        ("[a.jsonl,./a.jsonl]", "'a.jsonl' is listed twice"),  # one file, however it is written
        ("[d/a.jsonl,d/../d/a.jsonl]", "'d/a.jsonl' is listed twice"),
    ],
)
def test_a_list_that_names_no_set_or_one_file_twice_is_refused(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, ["data.source=file", "data.path=t.jsonl", f"data.eval_path={value}"])


def test_the_held_out_rows_of_each_file_are_tagged_with_its_set(tmp_path: Path) -> None:
    train = _sums(tmp_path / "train.jsonl", 0, 30)
    first = _sums(tmp_path / "gsm" / "test.jsonl", 100, 10)
    second = _sums(tmp_path / "math" / "test.jsonl", 200, 3)  # fewer rows than eval.n_prompts
    config = load_run_config(
        None,
        ["data.source=file", f"data.path={train}", f"data.eval_path=[{first},{second}]", "eval.n_prompts=4"],
    )
    _, held = build_data(config)
    assert [(p.prompt, p.meta["eval_set"]) for p in held] == [
        *((f"{i}+1=", "gsm/test") for i in range(100, 104)),
        *((f"{i}+1=", "math/test") for i in range(200, 203)),
    ]
    assert set(run_fingerprint(config)["data"]) == {str(train), str(first), str(second)}
    one = config.model_copy(update={"data": config.data.model_copy(update={"eval_path": str(first)})})
    assert all("eval_set" not in p.meta for p in build_data(one)[1])  # one file: one set, as before


# ------------------------------------------------------------------------------ the summary


def test_each_sets_pass_at_k_is_the_pass_at_k_of_its_problems_alone() -> None:
    rng = random.Random(5)
    outcomes = [
        ProblemOutcome(8, rng.randint(0, 8), rng.randint(1, 3), rng.choice(["b", "a", "c"]))
        for _ in range(40)
    ]
    result = summarize_pass_at_k(outcomes, [1, 4, 8])
    assert list(result["by_set"]) == list(dict.fromkeys(o.eval_set for o in outcomes))  # in their order
    for name, entry in result["by_set"].items():
        members = [o for o in outcomes if o.eval_set == name]
        assert entry["n_problems"] == len(members)
        for k in (1, 4, 8):
            assert entry[f"pass@{k}"] == pytest.approx(
                sum(pass_at_k(8, o.correct, k) for o in members) / len(members), rel=1e-12
            )
    # the overall number is the mean over every problem, not the mean of the sets' means
    assert result["pass@1"] == pytest.approx(sum(o.correct / 8 for o in outcomes) / 40, rel=1e-12)
    table = format_eval_table(result, "t")
    assert all(f"set {name}" in table for name in ("a", "b", "c"))
    assert "by_set" not in summarize_pass_at_k([ProblemOutcome(8, 3, 1)], [1])


# ------------------------------------------------------------------------ a run, evaluate, report


@dataclass(frozen=True)
class SetsRun:
    home: Path
    run_dir: Path
    summary: dict[str, Any]
    out: str


@pytest.fixture(scope="module")
def sets_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SetsRun]:
    """A tiny run on sums.jsonl held out on two files of its own: five rows of level 1 and five of level 3
    taken out of it."""
    from entropyctl.trainer.run import run_training

    home = tmp_path_factory.mktemp("sets_run")
    rows = [json.loads(line) for line in OWN_DATA.read_text().splitlines()]
    held = {1: [r for r in rows if r["level"] == 1][:5], 3: [r for r in rows if r["level"] == 3][:5]}
    for level, name in ((1, "easy"), (3, "hard")):
        _write(home / f"{name}.jsonl", [(r["problem"], r["answer"]) for r in held[level]])
    kept = [r for r in rows if r not in held[1] + held[3]]
    _write(home / "sums.jsonl", [(r["problem"], r["answer"]) for r in kept])  # no held-out row trains
    config = tiny_config(
        "data.source=file",
        "data.path=sums.jsonl",
        "data.eval_path=[easy.jsonl,hard.jsonl]",
        "trainer.steps=1",
        "eval.before=false",
        "eval.n_prompts=4",
        "eval.n_samples=4",
        "eval.ks=[1,4]",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        from contextlib import redirect_stdout
        from io import StringIO

        printed = StringIO()
        with redirect_stdout(printed):
            summary = run_training(config, home / "run")
    yield SetsRun(home, home / "run", summary, printed.getvalue())


def test_a_run_reports_each_held_out_set_and_their_union(sets_run: SetsRun) -> None:
    after = sets_run.summary["after"]
    assert list(after["by_set"]) == ["easy", "hard"]
    assert [after["by_set"][s]["n_problems"] for s in ("easy", "hard")] == [4, 4]
    assert after["n_problems"] == 8
    for k in ("pass@1", "pass@4"):  # equal sizes: the union's mean is the sets' mean
        assert after[k] == pytest.approx((after["by_set"]["easy"][k] + after["by_set"]["hard"][k]) / 2)
    assert "eval after [easy]: pass@1=" in sets_run.out and "eval after [hard]: pass@1=" in sets_run.out
    saved = json.loads((sets_run.run_dir / "summary.json").read_text())
    assert saved["after"]["by_set"] == after["by_set"]


def _evaluate(
    sets_run: SetsRun, extra: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    monkeypatch.chdir(sets_run.home)
    out = sets_run.home / "eval.json"
    capsys.readouterr()
    status = cli.main(["evaluate", "--checkpoint", str(sets_run.run_dir), "--json", str(out), *extra])
    captured = capsys.readouterr()
    return status, (json.loads(out.read_text()) if status == 0 else {}), captured.out + captured.err


def test_evaluate_scores_the_runs_sets_as_the_run_did(
    sets_run: SetsRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, result, printed = _evaluate(sets_run, [], monkeypatch, capsys)
    assert status == 0
    after = sets_run.summary["after"]
    for key in ("pass@1", "pass@4", "n_problems", "by_set"):
        assert result[key] == after[key], key
    assert "set easy" in printed and "set hard" in printed
    status, result, _ = _evaluate(sets_run, ["--problems", "2"], monkeypatch, capsys)
    assert status == 0 and {s: e["n_problems"] for s, e in result["by_set"].items()} == {"easy": 2, "hard": 2}


def test_evaluate_scores_the_runs_sets_without_its_training_file(
    sets_run: SetsRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--data run with a data.eval_path scores the held-out files alone: the training file may be gone (a
    run copied without it), and no warning says the scored problems changed."""
    train, aside = sets_run.home / "sums.jsonl", sets_run.home / "sums.jsonl.aside"
    train.rename(aside)
    try:
        status, result, printed = _evaluate(sets_run, [], monkeypatch, capsys)
    finally:
        aside.rename(train)
    assert status == 0, printed
    assert result["by_set"] == sets_run.summary["after"]["by_set"]
    assert "changed since the run was trained" not in printed
    hard = sets_run.home / "hard.jsonl"
    kept = hard.read_text()
    hard.write_text(kept + "\n")  # other bytes (a blank line more), the same rows
    try:
        status, _, printed = _evaluate(sets_run, [], monkeypatch, capsys)
    finally:
        hard.write_text(kept)
    assert status == 0 and "warning: hard.jsonl changed since the run was trained" in printed


def test_evaluate_takes_several_files_as_several_sets(
    sets_run: SetsRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, result, _ = _evaluate(
        sets_run, ["--data", "hard.jsonl,easy.jsonl", "--n", "1", "--k", "1"], monkeypatch, capsys
    )
    assert status == 0
    assert [(s, e["n_problems"]) for s, e in result["by_set"].items()] == [("hard", 5), ("easy", 5)]
    for bad, message in (
        ("easy.jsonl,nope.jsonl", "no such file (nope.jsonl)"),
        ("easy.jsonl,easy.jsonl", "listed twice"),
        ("easy.jsonl,./easy.jsonl", "listed twice"),  # one file, however it is written
    ):
        status, _, printed = _evaluate(sets_run, ["--data", bad], monkeypatch, capsys)
        assert status == 2 and message in printed


def test_the_report_tables_pass_at_k_per_set(sets_run: SetsRun, tmp_path: Path) -> None:
    from entropyctl.experiments.report import write_report

    shutil.copytree(sets_run.run_dir, tmp_path / "study" / "aer" / "seed0")
    doc = write_report(tmp_path / "study")
    text = (tmp_path / "study" / "report.md").read_text()
    assert "## pass@1 per held-out set (after training)" in text
    by_set = doc["arms"]["aer"]["after_by_set"]
    for name in ("easy", "hard"):
        assert by_set[name]["pass@1"]["mean"] == pytest.approx(
            sets_run.summary["after"]["by_set"][name]["pass@1"]
        )


def test_two_sets_of_one_file_name_are_told_apart_and_an_emptied_set_is_refused(tmp_path: Path) -> None:
    train = _sums(tmp_path / "train.jsonl", 0, 30)
    first = _write(tmp_path / "gsm" / "test.jsonl", [("1+1=", "2"), ("2+2=", "4")])
    second = _write(tmp_path / "math" / "test.jsonl", [("9" * 40 + "+1=", "1" + "0" * 40)])
    base = ["data.source=file", f"data.path={train}", f"data.eval_path=[{first},{second}]"]
    _, held = build_data(load_run_config(None, base))
    assert [p.id for p in held] == [f"{first}:1", f"{first}:2", f"{second}:1"]  # not test.jsonl:1 twice

    def drop_long(problems: list[Any]) -> list[Any]:  # what data.overlong_prompts: drop does to a long prompt
        return [p for p in problems if len(p.prompt) < 20]

    with pytest.raises(ValueError, match=r"math/test.jsonl \(held-out set 'math/test'\) has no rows left"):
        build_data(load_run_config(None, base), drop_long)
