"""Values that pass a type check but would crash (or train nothing) at run time fail at load, one line
each; YAML duplicate keys and alias bombs are errors."""

from __future__ import annotations

import time
import typing
from pathlib import Path

import pytest

from entropyctl.config import (
    LIGHTNING_ACCELERATORS,
    LIGHTNING_PRECISIONS,
    MAX_YAML_VALUES,
    ConfigError,
    load_run_config,
    load_yaml,
)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.betas=[0.9,1.0]", r"optim\.betas\[1\]: must be < 1"),
        ("optim.betas=[-0.1,0.9]", r"optim\.betas\[0\]: must be ≥ 0"),
        ("trainer.precision=17-true", r"must be one of \[.*'bf16-mixed'"),
        ("trainer.accelerator=gpux", r"must be one of \['auto', 'cpu'"),
        ("data.levels=[]", r"must name at least one level of \[1, 2, 3, 4, 5\]"),
        ("data.levels=[1,99]", r"unknown level\(s\) \[99\]"),
        ("data.levels=[1,1]", r"each level at most once"),
        ("seed=-1", r"must be ≥ 0"),
        ("seed=4294967296", r"must be ≤ 4294967295"),
        ("data.template=Solve this", r"must contain '\{prompt\}'"),
        ("reward.name=nope", r"must be one of \[.*'math'.*\] or 'package\.module:function'"),
        ("reward.name=not a path:x y", r"reward\.name|must be one of"),
        ("reward.shaping=[{name: nope}]", r"reward\.shaping\[0\]\.name: must be one of"),
        ("reward.shaping=[{name: operator:nope}]", r"reward\.shaping\[0\]\.name: .*has no attribute 'nope'"),
        (
            "reward.shaping=[{name: exact, options: {extrct: false}}]",
            r"reward\.shaping\[0\]\.options\.extrct",
        ),
        (
            "reward.shaping=[{name: reasoning_gym}]",
            r"reward\.shaping\[0\]\.name: reasoning_gym scores its own",
        ),
        ("reward.shaping=[{weight: 0.5}]", r"reward\.shaping\.0\.name|reward\.shaping\[0\]\.name"),
        ("reward.options.timeout=.nan", r"finite number of seconds > 0"),
        ("reward.options.timeout=.inf", r"finite number of seconds > 0"),
        ("reward.options.timeout=0", r"finite number of seconds > 0"),
        ("rollout.temperature=0.01", r"must be ≥ 0\.1"),
        ("trainer.steps=true", r"must be a number, not a boolean"),
        ("eval.n_prompts=false", r"must be a number, not a boolean"),
        # settings that did nothing: a data file on the synthetic task (a forgotten data.source=file
        # trained on arithmetic), a greedy evaluation's equal samples
        (
            "data.path=/no/such/train.jsonl",
            r"data\.path=\S+: only read when data\.source is 'file' \(got 'synthetic'\)",
        ),
        ("data.eval_path=held_out.jsonl", r"data\.eval_path=\S+: only read when data\.source is 'file'"),
        ("eval.temperature=0", r"eval\.n_samples: greedy decoding .* gives 8 equal samples"),
        ("eval.temperature=1e-6", r"eval\.temperature=1e-6: 1e-06 is greedy decoding in vLLM"),
    ],
)
def test_bad_value_fails_at_load_with_one_line(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as err:
        load_run_config(None, [override])
    assert len(err.value.errors) == 1, err.value.errors


def test_good_values_still_load() -> None:
    config = load_run_config(
        None,
        [
            "optim.betas=[0.0,0.99]",
            "trainer.precision=bf16-mixed",
            "trainer.accelerator=auto",
            "data.levels=[2,1]",
            "seed=4294967295",
            "data.template=Solve {prompt}",
            "reward.name=operator:eq",  # imported at load: it must exist
            "reward.options.timeout=2.5",
            "rollout.temperature=0.6",
            "trainer.steps=3",
        ],
    )
    assert config.trainer.steps == 3 and config.optim.betas == (0.0, 0.99)


def test_shaping_labels_name_each_column_once() -> None:
    config = load_run_config(
        None,
        [
            "reward.shaping=[{name: operator:lt}, {name: exact, weight: 0.5}, {name: exact}, "
            "{name: operator:gt, label: longer}]"
        ],
    )
    assert config.reward.shaping_labels() == ["lt", "exact", "exact_2", "longer"]
    assert [s.weight for s in config.reward.shaping] == [1.0, 0.5, 1.0, 1.0]


def test_precision_and_accelerator_lists_match_lightning() -> None:
    from lightning.fabric.connector import _PRECISION_INPUT
    from lightning.pytorch.accelerators import AcceleratorRegistry

    accepted = set()
    for literal in typing.get_args(_PRECISION_INPUT):
        accepted |= {str(value) for value in typing.get_args(literal)}
    assert set(LIGHTNING_PRECISIONS) == accepted
    assert set(AcceleratorRegistry.available_accelerators()) | {"gpu", "auto"} == set(LIGHTNING_ACCELERATORS)


def test_duplicate_yaml_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  steps: 3\n  devices: 1\n  steps: 100\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:4: duplicate key 'steps' \(first at line 2\)"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="duplicate key"):
        load_run_config(path)
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:2: duplicate key 'seed'"):
        load_yaml(path)


def test_merge_keys_and_small_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("base: &b {steps: 3}\ntrainer:\n  <<: *b\n  devices: 1\nlevels: &l [1, 2]\nagain: *l\n")
    assert load_yaml(path)["trainer"] == {"steps": 3, "devices": 1}


def test_billion_laughs_fails_fast(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(8):
        name, prev = chr(98 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")  # ~350 bytes, 9^9 ≈ 387 million strings expanded
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"expands to more than {MAX_YAML_VALUES:,} values"):
        load_run_config(path)
    # the walk stops at the limit: linear in MAX_YAML_VALUES, not in the expansion
    assert time.perf_counter() - start < 10.0


def test_a_greedy_evaluation_with_one_sample_loads() -> None:
    load_run_config(None, ["eval.temperature=0", "eval.n_samples=1", "eval.ks=[1]"])


def test_a_runs_own_config_is_not_refused_for_settings_that_did_nothing() -> None:
    """The checks for settings that did nothing (a data file on the synthetic source, a system message
    without the chat template, a greedy evaluation of several samples) refuse a new config; a run
    directory's config.yaml, what ran, still loads, so that run resumes and evaluates."""
    from entropyctl.config import parse_run_config, parse_written_config

    data = load_run_config(None).model_dump(mode="json")
    data["data"] |= {"path": "train.jsonl", "system": "Be brief."}
    data["eval"] |= {"temperature": 0.0}
    with pytest.raises(ConfigError) as err:
        parse_run_config(data)
    assert [e.split(":")[0] for e in err.value.errors] == ["data.system", "eval.n_samples"]  # one per section
    with pytest.raises(ConfigError, match="data.path: only read when data.source is 'file'"):
        parse_run_config({**data, "data": {**data["data"], "system": None}})
    written = parse_written_config(data)
    assert written.data.path == "train.jsonl" and written.eval.temperature == 0.0


def test_chat_template_kwargs_the_trainer_sets_are_refused() -> None:
    with pytest.raises(ConfigError, match="tokenize is set by the trainer"):
        load_run_config(None, ["data.chat_template=true", "data.chat_template_kwargs={tokenize: true}"])
