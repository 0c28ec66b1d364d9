"""`entropyctl evaluate`: which problems it scores, and its input checks.

A run trained on a data file is scored on its own held-out split (the problems of its summary.json
'after' evaluation), not on the synthetic task's; a bad option is one line, exit status 2, before any
checkpoint or model is loaded.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from trainer_helpers import tiny_config

from entropyctl import cli

REPO = Path(__file__).resolve().parents[1]
OWN_DATA = REPO / "examples" / "own_data" / "sums.jsonl"  # 120 rows, levels 1-3


@dataclass(frozen=True)
class FileRun:
    home: Path  # the directory it was trained from: its config.yaml names data.path relative to it
    run_dir: Path
    config: Any
    summary: dict[str, Any]


@pytest.fixture(scope="module")
def file_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileRun]:
    """A tiny run trained on a copy of examples/own_data/sums.jsonl, named by a relative path as in
    examples/own_data/config.yaml."""
    from entropyctl.trainer.run import run_training

    home = tmp_path_factory.mktemp("file_run")
    shutil.copy(OWN_DATA, home / "sums.jsonl")
    config = tiny_config(
        "data.source=file",
        "data.path=sums.jsonl",
        "data.options.level_field=level",
        "trainer.steps=2",
        "eval.before=false",
        "eval.n_prompts=20",
        "eval.n_samples=8",
        "eval.ks=[1,4,8]",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        summary = run_training(config, home / "run")
    yield FileRun(home, home / "run", config, summary)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _record_problems(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The problems `entropyctl evaluate` scores, in order (it calls evaluate_problems once)."""
    from entropyctl.trainer import evaluation

    seen: list[Any] = []
    real = evaluation.evaluate_problems

    def recording(problems: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.extend(problems)
        return real(problems, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_problems", recording)
    return seen


def _forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a checkpoint or building a model fails the test (the checks must come first)."""
    from entropyctl.models import loading
    from entropyctl.trainer import checkpoints

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a checkpoint or model was loaded before the arguments were checked")

    monkeypatch.setattr(loading, "load_policy", refuse)
    monkeypatch.setattr(checkpoints, "load_checkpoint", refuse)


# ------------------------------------------------------------------- which problems are scored


def _held_out(file_run: FileRun) -> list[Any]:
    """The run's held-out split, computed here independently: a seeded draw of 20 rows of sums.jsonl."""
    from entropyctl.data.loaders import load_math_dataset, split_held_out

    rows = load_math_dataset(file_run.home / "sums.jsonl", level_field="level")
    return list(split_held_out(rows, 20, file_run.config.data.seed)[1])


def _scored(
    file_run: FileRun, extra: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str, list[Any]]:
    """(exit status, stdout, stderr, the problems scored) of `evaluate --checkpoint RUN *extra`, run from
    the directory the run was trained in."""
    monkeypatch.chdir(file_run.home)
    seen = _record_problems(monkeypatch)
    status, stdout, err = _cli(["evaluate", "--checkpoint", str(file_run.run_dir), *extra], capsys)
    return status, stdout, err, seen


def test_a_file_run_is_scored_on_its_own_held_out_split(
    file_run: FileRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The default --data: the rows the run held out of sums.jsonl (a seeded draw of eval.n_prompts rows),
    # the problems of its summary.json 'after' evaluation: same problems and seeds, same numbers.
    out = tmp_path / "eval.json"
    status, stdout, _, seen = _scored(file_run, ["--json", str(out)], monkeypatch, capsys)
    assert status == 0
    assert [(p.prompt, p.answer) for p in seen] == [(p.prompt, p.answer) for p in _held_out(file_run)]
    evaluated = json.loads(out.read_text())
    after = file_run.summary["after"]
    for key in ("pass@1", "pass@4", "pass@8", "n_samples", "n_problems", "seed", "by_level"):
        assert evaluated[key] == after[key], key
    assert 0.0 < after["pass@8"]  # some samples are right: the equality is not between two zeros
    assert "sums.jsonl" in evaluated["data"]
    assert "8 samples per problem, 20 problems" in stdout


def test_problems_n_of_a_file_run_are_the_first_n_of_its_held_out_split(
    file_run: FileRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not a new draw of N rows (which could hold rows the run trained on): a part of the same split.
    status, _, _, seen = _scored(file_run, ["--problems", "5", "--n", "1", "--k", "1"], monkeypatch, capsys)
    assert status == 0
    assert [p.prompt for p in seen] == [p.prompt for p in _held_out(file_run)[:5]]


def test_data_synthetic_is_the_old_name_of_the_runs_own_split(
    file_run: FileRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err, seen = _scored(
        file_run, ["--data", "synthetic", "--n", "1", "--k", "1"], monkeypatch, capsys
    )
    assert status == 0
    assert [p.prompt for p in seen] == [p.prompt for p in _held_out(file_run)]
    assert "--data run" in err and "data.source=synthetic" in err  # says so, and how to get the task


def test_a_file_run_whose_data_file_is_gone_is_one_line_naming_it(
    file_run: FileRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # data.path is relative: run from another directory, the file is not there. An error naming it,
    # before the model is built; never a score on other problems.
    monkeypatch.chdir(tmp_path)
    _forbid_loading(monkeypatch)
    status, _, err = _cli(["evaluate", "--checkpoint", str(file_run.run_dir)], capsys)
    assert status == 2
    assert err.count("\n") == 1, err
    assert err.startswith("entropyctl evaluate: error: ") and "data.path" in err
    assert "sums.jsonl" in err and str(tmp_path) in err


def test_a_data_file_changed_since_training_is_warned_about(
    file_run: FileRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its held-out split is drawn from other rows now: not the run's 'after' problems, say so.
    edited = tmp_path / "sums.jsonl"
    edited.write_text(
        (file_run.home / "sums.jsonl").read_text() + '{"problem": "1+1=", "answer": "2", "level": 1}\n'
    )
    monkeypatch.chdir(file_run.home)
    argv = ["evaluate", "--checkpoint", str(file_run.run_dir), "--n", "1", "--k", "1"]
    status, _, err = _cli([*argv, "--set", f"data.path={edited}"], capsys)
    assert status == 0, err
    assert f"{edited} changed since the run was trained" in err
    status, _, err = _cli(argv, capsys)  # the file it trained on: no warning
    assert status == 0
    assert "changed since" not in err


def test_data_file_scores_every_row_and_warns_when_it_is_the_runs_training_file(
    file_run: FileRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(file_run.home)
    seen = _record_problems(monkeypatch)
    argv = ["evaluate", "--checkpoint", str(file_run.run_dir), "--data", "sums.jsonl", "--n", "1", "--k", "1"]
    status, _, err = _cli(argv, capsys)
    assert status == 0
    assert len(seen) == 120  # every row of the file, the 100 the run trained on included
    assert "training rows" in err and "--data run" in err
    seen.clear()
    status, _, _ = _cli([*argv, "--problems", "7"], capsys)
    assert status == 0
    rows = (file_run.home / "sums.jsonl").read_text().splitlines()
    assert [p.prompt for p in seen] == [json.loads(row)["problem"] for row in rows[:7]]


# ------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--n", "2", "--k", "1,4"], "--k 1,4: pass@4 needs at least 4 samples per problem; --n is 2"),
        (["--n", "2"], "pass@8 needs at least 8 samples per problem; --n is 2"),  # the run's eval.ks 1,4,8
        (["--k", "0"], "--k: expected comma-separated integers ≥ 1 like 1,4,8 (got '0')"),
        (["--k", "1,x"], "--k: expected comma-separated integers ≥ 1 like 1,4,8 (got '1,x')"),
        (["--n", "0"], "--n: must be ≥ 1"),
        (["--problems", "0"], "--problems: must be ≥ 1"),
        (["--problems", "21"], "--problems 21: the run held out only 20 rows of sums.jsonl"),
        (["--max-new-tokens", "0"], "--max-new-tokens: must be ≥ 1"),
        (["--temperature", "-1"], "--temperature: must be ≥ 0"),
        (["--temperature", "nan"], "--temperature: must be ≥ 0 and finite"),
        (["--temperature", "inf"], "--temperature: must be ≥ 0 and finite"),
        (["--temperature", "0"], "--temperature 0: greedy decoding gives equal samples"),
        (["--temperature", "1e-6"], "--temperature 1e-06: greedy decoding in vLLM and sampling in the HF"),
        (["--temperature", "0", "--n", "4", "--k", "1"], "add --n 1 --k 1"),
        # greedy from the run config (valid there with one sample and pass@1), with more samples asked
        (
            [
                "--set",
                "eval.temperature=0",
                "--set",
                "eval.n_samples=1",
                "--set",
                "eval.ks=[1]",
                "--k",
                "1,4",
            ],
            "eval.temperature 0 of",
        ),
        # eval.ks as written, out of order: pass@8 was dropped from the table without a word
        (["--set", "eval.ks=[8,1]", "--n", "4"], "pass@8 needs at least 8 samples per problem; --n is 4"),
        (["--by", "difficulty"], "--by: expected one of 'level', 'none'"),
        (["--json", "no-such-dir/eval.json"], "--json no-such-dir/eval.json: no directory 'no-such-dir'"),
        (["--data", "missing.jsonl"], "--data missing.jsonl: no such file"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_a_bad_option_is_one_line_before_any_model_loads(
    file_run: FileRun,
    argv: list[str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(file_run.home)
    _forbid_loading(monkeypatch)
    status, stdout, err = _cli(["evaluate", "--checkpoint", str(file_run.run_dir), *argv], capsys)
    assert status == 2
    assert err.count("\n") == 1, err
    assert err.startswith("entropyctl evaluate: error: ") and expected in err, err
    assert stdout == ""


def test_threads_sets_torchs_intra_op_threads(
    file_run: FileRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    monkeypatch.chdir(file_run.home)
    before = torch.get_num_threads()
    wanted = 2 if before != 2 else 1
    try:
        argv = [
            "evaluate",
            "--checkpoint",
            str(file_run.run_dir),
            "--threads",
            str(wanted),
            "--problems",
            "1",
        ]
        status, _, _ = _cli([*argv, "--n", "1", "--k", "1"], capsys)
        assert status == 0
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_help_says_what_each_data_choice_scores(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'run' (default): the run's own held-out split" in text
    assert "FILE: every row of a JSONL/Parquet file" in text and "the first N rows" in text
    assert "--threads" in text


def test_a_runs_shaping_plugins_need_not_be_importable_to_evaluate_it(tmp_path: Path) -> None:
    """evaluate scores with the verifier alone, yet it validated the whole reward section: a run trained
    with a package.module:function shaping reward could not be evaluated where that module is absent."""
    import yaml

    from entropyctl.cli.evaluate import resolve_target
    from entropyctl.config import load_run_config

    written = load_run_config(None).model_dump(mode="json")
    written["reward"]["shaping"] = [{"name": "no_such_package.rewards:has_number", "weight": 0.1}]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(written))
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    target = resolve_target(str(run), [])
    assert target.config.reward.shaping == [] and target.config.reward.name == written["reward"]["name"]
