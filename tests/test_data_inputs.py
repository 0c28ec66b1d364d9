"""Inputs checked before the first step: line size cap, decode errors as file:line, a UTF-8 BOM,
prompts against the model's context, overlapping training / held-out rows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from trainer_helpers import tiny_config

from entropyctl.data.loaders import DatasetError, check_overlap, load_math_dataset
from entropyctl.trainer.run import build_data, build_module, fit_prompts_to_context


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"question": "1+1?", "answer": "2"}).encode() + b"\n")
    assert [p.answer for p in load_math_dataset(path)] == ["2"]


def test_undecodable_bytes_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps({"question": "1+1?", "answer": "2"}).encode()
    path.write_bytes(good + b"\n" + '{"question": "caf\xe9?", "answer": "1"}'.encode("latin-1") + b"\n")
    with pytest.raises(DatasetError, match=r"latin1\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 18\)"):
        load_math_dataset(path)


def test_a_huge_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
        f.write('{"question": "' + "x" * 50_000_000 + '", "answer": "1"}\n')  # 50 MB, as in the report
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"huge\.jsonl:2: line longer than 1,048,576 bytes"):
        load_math_dataset(path)
    assert time.perf_counter() - start < 5.0
    # the cap is an option
    with pytest.raises(DatasetError, match=r"huge\.jsonl:1: line longer than 10 bytes"):
        load_math_dataset(path, max_line_bytes=10)


def test_overlap_and_duplicates_are_reported() -> None:
    from entropyctl.data.synthetic import Problem

    train = [
        Problem("2+2=", "4", 1, id="f:1"),
        Problem("3+3=", "6", 1, id="f:2"),
        Problem("2+2=", "4", 1, id="f:3"),
    ]
    heldout = [Problem("3+3=", "6", 1, id="g:1"), Problem("5+5=", "10", 1, id="g:2")]
    lines = check_overlap(train, heldout)
    assert lines[0].startswith("1 training prompt(s) are duplicates, e.g. f:3 repeats f:1")
    assert lines[1].startswith("1 of 2 held-out prompt(s) also appear in training, e.g. g:1 = f:2")
    assert check_overlap(train[:2], heldout[1:]) == []


def test_build_data_warns_about_overlap(tmp_path: Path) -> None:
    rows = [{"question": f"{a}+1=", "answer": str(a + 1)} for a in range(5)]
    train = _write(tmp_path / "train.jsonl", rows)
    held = _write(tmp_path / "held.jsonl", rows[3:])
    config = tiny_config(
        "data.source=file", f"data.path={train}", f"data.eval_path={held}", "eval.n_prompts=2"
    )
    with pytest.warns(UserWarning, match="2 of 2 held-out prompt"):
        build_data(config)


def test_prompt_longer_than_the_context_fails_at_load_naming_file_line(tmp_path: Path) -> None:
    rows = (
        [{"question": "1+2=", "answer": "3"}] * 3
        + [{"question": "1+" * 200 + "1=", "answer": "201"}]
        + [{"question": "2+2=", "answer": "4"}] * 3
    )
    data = _write(tmp_path / "long.jsonl", rows)
    config = tiny_config(
        "data.source=file", f"data.path={data}", "eval.n_prompts=2", "rollout.max_new_tokens=6"
    )
    # the tiny model's context is model.tiny.max_position_embeddings = 256 (characters = tokens)
    with pytest.raises(
        DatasetError, match=r"long\.jsonl:4: prompt is \d+ tokens; .* context of 256 leaves 250"
    ):
        build_module(config)
    config = tiny_config(
        "data.source=file", f"data.path={data}", "eval.n_prompts=2", "data.overlong_prompts=drop"
    )
    with pytest.warns(UserWarning, match="dropped 1 of 7 rows of long.jsonl"):
        module = build_module(config)
    assert all(len(p.prompt) < 100 for p in module.eval_problems)


def test_max_prompt_tokens_caps_a_prompt_below_the_context(tmp_path: Path) -> None:
    """data.max_prompt_tokens (verl's max_prompt_length): a prompt over it is an error naming file:line and
    the cap, or dropped with data.overlong_prompts=drop; the context still limits the rest."""
    rows = [{"question": "1+2=", "answer": "3"}] * 4 + [{"question": "1+" * 20 + "1=", "answer": "21"}]
    data = _write(tmp_path / "mid.jsonl", rows)
    base = ["data.source=file", f"data.path={data}", "eval.n_prompts=2"]
    build_module(tiny_config(*base))  # 42 characters: inside the context
    with pytest.raises(
        DatasetError, match=r"mid\.jsonl:5: prompt is \d+ tokens; data\.max_prompt_tokens is 30"
    ):
        build_module(tiny_config(*base, "data.max_prompt_tokens=30"))
    with pytest.warns(UserWarning, match=r"dropped 1 of 5 rows of mid\.jsonl whose prompt is over 30 tokens"):
        module = build_module(tiny_config(*base, "data.max_prompt_tokens=30", "data.overlong_prompts=drop"))
    assert all(len(p.prompt) < 30 for p in module.eval_problems)
    # a cap above what the context leaves changes nothing: the context's bound is named
    config = tiny_config(*base, "data.max_prompt_tokens=4000", "rollout.max_new_tokens=220")
    with pytest.raises(DatasetError, match=r"context of 256 leaves 36"):
        build_module(config)


def test_a_response_longer_than_the_context_names_max_new_tokens_for_every_source(tmp_path: Path) -> None:
    """max_new_tokens at or past the context leaves no room for any prompt: one error naming that field
    (not a prompt of a file row), and on the synthetic source too, which has no per-row check."""
    from entropyctl.config import ConfigError

    data = _write(tmp_path / "ok.jsonl", [{"question": "1+2=", "answer": "3"}] * 5)
    for source in (["data.source=file", f"data.path={data}", "eval.n_prompts=2"], []):
        config = tiny_config(*source, "rollout.max_new_tokens=300")
        with pytest.raises(
            ConfigError, match=r"rollout\.max_new_tokens: responses of up to 300 tokens .* 256"
        ):
            build_module(config)
    with pytest.raises(ConfigError, match=r"eval\.max_new_tokens: responses of up to 256 tokens"):
        build_module(tiny_config("eval.max_new_tokens=256"))


def test_fit_is_a_no_op_without_a_known_context() -> None:
    config = tiny_config()
    rows = [object()]
    assert fit_prompts_to_context(config, lambda text: [0] * 10**6, None)(rows) == rows  # type: ignore[list-item]


def test_the_tiny_model_warns_of_prompts_in_characters_it_cannot_read(tmp_path: Path) -> None:
    """The tiny model's vocabulary is its task's characters: a file row in words, or a template adding
    characters, trains on <unk>s. One warning counting such prompts, naming the first row (file) or
    pointing at data.template (synthetic); none for prompts in the task's characters."""
    import warnings

    rows = [{"question": "1+2=", "answer": "3"}] * 4 + [{"question": "What is 1+1?", "answer": "2"}]
    data = _write(tmp_path / "words.jsonl", rows)
    config = tiny_config("data.source=file", f"data.path={data}", "eval.n_prompts=2")
    with pytest.warns(
        UserWarning, match=r"data: 1 of 5 prompts of words\.jsonl \(e\.g\. words\.jsonl:5\): .*<unk>"
    ):
        build_module(config)
    with pytest.warns(UserWarning, match=r"held-out prompts as templated \(data\.template\?\).*<unk>"):
        build_module(tiny_config("data.template={prompt} A:"))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_module(tiny_config("data.template=({prompt})"))  # characters of the task: no such warning
    assert not [w for w in seen if "<unk>" in str(w.message)]


def test_with_the_vllm_engine_prompts_fit_its_max_model_len(tmp_path: Path) -> None:
    """rollout.engine=vllm: a prompt and its response must fit rollout.options.max_model_len when it is
    shorter than the model's context — checked with the data (a prompt within the model's context but over
    the engine's length failed at the first step that sampled it, minutes into the run). No engine starts."""
    from entropyctl.config import ConfigError
    from entropyctl.models.loading import load_policy
    from entropyctl.trainer.run import build_prompt_encoder, build_run_data

    rows = [{"question": "1+2=", "answer": "3"}] * 4 + [{"question": "1+" * 30 + "1=", "answer": "31"}]
    data = _write(tmp_path / "long.jsonl", rows)
    base = ["data.source=file", f"data.path={data}", "eval.n_prompts=2", "rollout.engine=vllm"]
    config = tiny_config(*base, "rollout.options.max_model_len=64", "rollout.max_new_tokens=16")
    policy, tokenizer = load_policy(config.model)
    encode = build_prompt_encoder(config, tokenizer)
    with pytest.raises(DatasetError, match=r"long\.jsonl:5: .*rollout\.options\.max_model_len of 64 leaves"):
        build_run_data(config, policy, tokenizer, encode)
    dropping = tiny_config(*base, "rollout.options.max_model_len=64", "data.overlong_prompts=drop")
    with pytest.warns(UserWarning, match=r"dropped 1 of 5 rows"):
        sampler, held = build_run_data(dropping, policy, tokenizer, encode)
    with pytest.raises(
        ConfigError, match=r"rollout\.max_new_tokens: .* in rollout\.options\.max_model_len of 64"
    ):
        build_run_data(
            tiny_config(*base, "rollout.options.max_model_len=64", "rollout.max_new_tokens=64"),
            policy,
            tokenizer,
            encode,
        )
    # a max_model_len above the model's context (256) leaves the context as the limit, named
    wide = tiny_config(*base, "rollout.options.max_model_len=4096", "rollout.max_new_tokens=200")
    with pytest.raises(DatasetError, match=r"long\.jsonl:5: .*the model's context of 256 leaves 56"):
        build_run_data(wide, policy, tokenizer, encode)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("cpu_kv_cache_gib=0.25", r"rollout\.options\.cpu_kv_cache_gib\b.*valid integer"),
        ("max_model_len=8", r"rollout\.options\.max_model_len\b.*greater than or equal to 16"),
        (
            "max_modle_len=64",
            r"rollout\.options\.max_modle_len\b.*unknown option of the vllm engine; did you mean max_model_len\?",
        ),
    ],
)
def test_vllm_engine_options_are_checked_with_the_config(option: str, message: str) -> None:
    """rollout.options of the vllm engine are its VLLMConfig: a bad one is a config error when the config
    loads, not when the engine starts (a fractional cpu_kv_cache_gib crashed vLLM's start-up)."""
    from entropyctl.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_config("rollout.engine=vllm", f"rollout.options.{option}")
