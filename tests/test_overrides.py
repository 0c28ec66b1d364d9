"""`--set` overrides: errors name the override, unknown fields suggest the right one, numbers stay exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from entropyctl import cli
from entropyctl.config import ConfigError, apply_overrides, load_run_config, suggest_field


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["controller.tau=-1"], "--set controller.tau=-1: must be > 0"),
        (["trainer.devcies=2"], "--set trainer.devcies=2: unknown field; did you mean trainer.devices?"),
        (["trainer.max_steps=5"], "--set trainer.max_steps=5: unknown field; did you mean trainer.steps?"),
        # a review's findings: pydantic's union internals (data.levels.list[int] ...), a range for no k
        (["data.levels=2"], "--set data.levels=2: a list of levels, e.g. [2]"),
        (["eval.ks=[]"], "--set eval.ks=[]: at least one k, e.g. [1]"),
    ],
)
def test_override_errors_name_the_override(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    assert str(info.value) == message  # one line, and not the package's default.yaml


def test_several_bad_overrides_are_each_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["controller.tau=-1", "trainer.steps=0", "trainer.lr=1"])
    text = str(info.value)
    assert "default.yaml" not in text
    assert "--set controller.tau=-1: must be > 0" in text and "--set trainer.steps=0: " in text
    assert "--set trainer.lr=1: unknown field" in text


def test_a_bad_field_in_a_file_still_names_the_file(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  devcies: 2\n")
    with pytest.raises(ConfigError) as info:
        load_run_config(path, ["trainer.steps=3"])
    text = str(info.value)
    assert str(path) in text and "trainer.devcies: unknown field" in text and "trainer.devices" in text


def test_suggestions() -> None:
    assert suggest_field("trainer.devcies") == "trainer.devices"
    assert suggest_field("trainer.max_steps") == "trainer.steps"
    assert suggest_field("rollout.group_sise") == "rollout.group_size"
    assert suggest_field("trainer.zzzzzz") is None


def test_integers_are_parsed_exactly() -> None:
    big = 12345678901234567  # not representable as a float64
    assert apply_overrides({}, [f"seed={big}"])["seed"] == big
    task = [  # a source that reads data.options (synthetic reads none)
        "data.source=reasoning_gym",
        "data.name=chain_sum",
        "data.levels=null",
        "reward.name=reasoning_gym",
    ]
    assert load_run_config(None, [*task, f"data.options.size={big}"]).data.options["size"] == big
    assert apply_overrides({}, ["a=-3", "b=1e-3", "c=2.5"]) == {"a": -3, "b": 1e-3, "c": 2.5}


def test_a_float_without_a_dot_is_a_number_inside_lists_mappings_and_files(tmp_path: Path) -> None:
    """YAML 1.1 read ``1e-3`` as a string except where an override held it alone: a plugin reward's
    options (``{timeout: 5e0}``) got the text, and a resume saw ``'5e0'`` and ``5`` as a change."""
    from entropyctl.config import load_yaml

    out = apply_overrides({}, ["reward.options={timeout: 5e0, scale: [1e-3, +2E2]}", "x=1e-3", "y=e5"])
    assert out["reward"]["options"] == {"timeout": 5.0, "scale": [0.001, 200.0]}
    assert out["x"] == 0.001 and out["y"] == "e5"  # not a number: text as written
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\nreward:\n  options: {timeout: 5e0}\n")
    assert load_yaml(path) == {"optim": {"lr": 0.0003}, "reward": {"options": {"timeout": 5.0}}}


def test_cli_prints_the_override_error_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--set", "controller.tau=-1"]) == 2
    assert capsys.readouterr().err == "entropyctl train: error: --set controller.tau=-1: must be > 0\n"


def test_a_full_disk_is_one_line_that_says_how_to_continue(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from entropyctl.cli import train

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train, "train_from_cli", full)
    assert cli.main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("entropyctl train: error: No space left on device.")
    assert "--resume auto" in err and "trainer.keep_checkpoints" in err

    def other(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(train, "train_from_cli", other)
    with pytest.raises(OSError, match="Input/output"):  # any other OS error keeps its traceback
        cli.main(["train"])


def test_an_override_to_another_update_rule_starts_that_rule_from_its_defaults() -> None:
    """configs/default.yaml writes the relative rule's fields out; `--set controller.update.rule=additive`
    would otherwise carry `step`, `proportional`, ... into a rule that has none of them. Like
    `controller.name`, a change of variant drops the old variant's fields; the same rule keeps them."""
    additive = load_run_config(None, ["controller.update.rule=additive", "controller.update.eta=0.01"])
    update = additive.controller.update  # type: ignore[union-attr]
    assert update.rule == "additive" and update.eta == 0.01  # type: ignore[union-attr]
    default_smoothing = load_run_config(None).controller.update.smoothing  # type: ignore[union-attr]
    same = load_run_config(None, ["controller.update.rule=relative", "controller.update.step=0.1"])
    kept = same.controller.update  # type: ignore[union-attr]
    assert kept.step == 0.1 and kept.smoothing == default_smoothing  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="step"):  # a field the new rule lacks is still an error
        load_run_config(None, ["controller.update.rule=additive", "controller.update.step=0.1"])
    anchor = load_run_config(
        None, ["controller.anchor.mode=absolute", "controller.anchor.target_entropy=0.3"]
    )
    assert anchor.controller.anchor.target_entropy == 0.3  # type: ignore[union-attr]  (no `tau` carried over)


def test_an_override_to_the_value_a_section_already_resolves_to_keeps_its_fields(tmp_path: Path) -> None:
    """A file that leaves the rule (or the name) out resolves to the default one: setting that same rule,
    or the name written in quotes, dropped the file's fields (step 0.2 → 0.05, alpha_0 0.02 → 0.005)."""
    path = tmp_path / "c.yaml"
    path.write_text("controller:\n  name: aer\n  alpha_0: 0.02\n  update: {step: 0.2, alpha_max: 0.5}\n")
    for override in ("controller.update.rule=relative", 'controller.name="aer"', "controller.name=aer"):
        config = load_run_config(path, [override]).controller
        assert (config.alpha_0, config.update.step, config.update.alpha_max) == (0.02, 0.2, 0.5), override  # type: ignore[union-attr]
    flat = tmp_path / "flat.yaml"  # the first release's flat form: eta alone means the additive rule
    flat.write_text("controller:\n  name: aer\n  eta: 0.01\n")
    assert load_run_config(flat, ["controller.update.rule=additive"]).controller.update.eta == 0.01  # type: ignore[union-attr]
    switched = load_run_config(path, ["controller.update.rule=additive"]).controller.update
    assert switched.rule == "additive" and switched.alpha_max == 0.05  # type: ignore[union-attr]  (a switch: defaults)


def test_ablate_set_switches_a_rule_as_train_set_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ablate --set controller.update.rule=additive` on a base holding the relative rule's fields failed
    with 'controller.update.step: unknown field' where `train --set` switched."""
    import entropyctl.experiments.ablate as ablate

    planned: list[dict[str, Any]] = []

    def record(todo, jobs, threads, log, children):  # type: ignore[no-untyped-def]
        planned.extend(spec.config for spec in todo)
        return {}, []

    monkeypatch.setattr(ablate, "_run_all", record)
    base = {"controller": {"name": "aer", "update": {"rule": "relative", "step": 0.1}}}
    ablate.run_ablation(
        base, ["aer"], [0], out=tmp_path / "abl", overrides=["controller.update.rule=additive"],
        report=False, warm_start=False, log=lambda line: None,
    )  # fmt: skip
    assert planned[0]["controller"]["update"]["rule"] == "additive"


def test_the_loaders_text_options_take_the_text_as_typed(tmp_path: Path) -> None:
    """`--set 'data.options.template=Q: {prompt}'` became the mapping {'Q': {'prompt': None}} (a free-form
    options map has no schema to say it is text) and failed at the run's start with a traceback."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"problem": "1+1=", "answer": "2"}\n')
    for value in ("Q: {prompt}", "{prompt}"):
        config = load_run_config(
            None, ["data.source=file", f"data.path={data}", f"data.options.template={value}"]
        )
        assert config.data.options["template"] == value
    with pytest.raises(
        ConfigError, match=r"several held-out files are a list: data.eval_path=\[a.jsonl,b.jsonl\]"
    ):
        load_run_config(None, ["data.source=file", f"data.path={data}", "data.eval_path=a.jsonl,b.jsonl"])
