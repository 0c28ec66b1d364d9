"""Controller configs: validation rules (one test per rule, each naming the field), YAML loading,
overrides and the run-config ``controller`` field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError

from entropyctl.config import (
    AERConfig,
    ConfigError,
    ControllerField,
    FixedConfig,
    TargetConfig,
    apply_overrides,
    format_validation_error,
    load_yaml,
    parse_controller_config,
)


def error_of(config: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_controller_config(config)
    return str(info.value)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # coefficients ≥ 0
        ({"name": "fixed", "alpha": -0.1}, "controller.alpha: must be ≥ 0"),
        ({"name": "aer", "alpha_min": -1e-3}, "controller.alpha_min: must be ≥ 0"),
        ({"name": "target", "eta": -0.5}, "controller.eta: must be ≥ 0"),
        ({"name": "aer", "delta": -1.0}, "controller.delta: must be ≥ 0"),
        # alpha_min ≤ alpha_0 ≤ alpha_max
        (
            {"name": "aer", "alpha_0": 0.5, "alpha_max": 0.1},
            "controller.alpha_0: must be ≤ alpha_max = 0.1 (got 0.5)",
        ),
        (
            {"name": "aer", "alpha_0": 0.01, "alpha_min": 0.02},
            "controller.alpha_0: must be ≥ alpha_min = 0.02",
        ),
        ({"name": "target", "alpha_min": 0.2, "alpha_max": 0.1}, "controller.alpha_min: must be ≤ alpha_max"),
        # 0 < tau ≤ 1
        ({"name": "aer", "tau": 0.0}, "controller.tau: must be > 0"),
        ({"name": "aer", "tau": 1.5}, "controller.tau: must be ≤ 1"),
        # 0 ≤ rho ≤ 1
        ({"name": "aer", "rho": -0.1}, "controller.rho: must be ≥ 0"),
        ({"name": "aer", "rho": 1.1}, "controller.rho: must be ≤ 1"),
        # clip bounds > 0
        ({"name": "clip_higher", "clip_high": 0.0}, "controller.clip_high: must be > 0"),
        ({"name": "fixed", "clip_low": -0.2}, "controller.clip_low: must be > 0"),
        # finite numbers only
        ({"name": "aer", "eta": float("nan")}, "controller.eta: must be a finite number"),
        ({"name": "fixed", "alpha": float("inf")}, "controller.alpha: must be a finite number"),
        # anchor_steps ≥ 1, absolute anchor needs a target
        ({"name": "aer", "anchor_steps": 0}, "controller.anchor_steps: must be ≥ 1"),
        (
            {"name": "target", "anchor": "absolute"},
            "controller.target_entropy: required when anchor is 'absolute'",
        ),
        # choices and unknown fields
        (
            {"name": "aer", "update": "momentum"},
            "controller.update: must be one of 'additive', 'sign' or 'log'",
        ),
        ({"name": "aer", "allocation": "soft"}, "controller.allocation: must be one of"),
        ({"name": "aer", "tau ": 0.4}, "controller.tau : unknown field (valid fields: name, alpha_0"),
    ],
)
def test_each_validation_rule_names_its_field(config: dict, expected: str) -> None:
    assert expected in error_of(config)


def test_unknown_controller_lists_the_available_names() -> None:
    message = error_of({"name": "aerr"})
    assert message.startswith("controller.name: unknown controller 'aerr'")
    for name in ("aer", "clip_higher", "fixed", "target"):
        assert name in message


def test_missing_name_and_non_mapping() -> None:
    assert "controller.name: required field is missing (available: aer" in error_of({"tau": 0.4})
    assert "controller: must be a mapping" in error_of(3.0)


def test_several_errors_are_reported_together_one_line_each() -> None:
    message = error_of({"name": "aer", "tau": 2.0, "rho": -1.0, "eta": float("inf")})
    lines = [line.strip() for line in message.splitlines()]
    assert lines[0] == "invalid configuration:"
    assert {line.split(":")[0] for line in lines[1:]} == {
        "controller.tau",
        "controller.rho",
        "controller.eta",
    }


def test_defaults_and_round_trip() -> None:
    aer = parse_controller_config({"name": "aer"})
    assert isinstance(aer, AERConfig)
    assert (aer.tau, aer.rho, aer.allocation, aer.update, aer.anchor) == (
        0.4,
        0.5,
        "threshold",
        "additive",
        "initial",
    )
    assert (
        aer.step_size == 0.002 and parse_controller_config({"name": "aer", "update": "log"}).step_size == 0.5
    )
    assert parse_controller_config(aer.model_dump()) == aer
    assert parse_controller_config("target") == TargetConfig()


def test_load_yaml_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("controller:\n  name: aer\n  tau: 0.5\n")
    assert load_yaml(good) == {"controller": {"name": "aer", "tau": 0.5}}
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("controller:\n  name: aer\n tau: [0.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_yaml(bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml")


def test_apply_overrides_parses_yaml_scalars_and_dotted_paths() -> None:
    base = {"controller": {"name": "aer", "tau": 0.4}, "trainer": {"steps": 10}}
    result = apply_overrides(
        base,
        [
            "controller.tau=0.5",
            "controller.eta=1e-3",
            "controller.dynamic=false",
            "trainer.steps=20",
            "new.deep.key=abc",
            "controller.target_entropy=null",
            "trainer.levels=[1, 2]",
        ],
    )
    assert result["controller"] == {
        "name": "aer",
        "tau": 0.5,
        "eta": 0.001,
        "dynamic": False,
        "target_entropy": None,
    }
    assert result["trainer"] == {"steps": 20, "levels": [1, 2]}
    assert result["new"] == {"deep": {"key": "abc"}}
    assert base["controller"]["tau"] == 0.4  # the input is not modified
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(base, ["controller.tau"])
    with pytest.raises(ConfigError, match="controller.name is not a mapping"):
        apply_overrides(base, ["controller.name.x=1"])


class _Run(BaseModel):
    controller: ControllerField = Field(default_factory=AERConfig)
    steps: int = 1


def test_controller_field_in_a_run_config() -> None:
    run = _Run.model_validate({"controller": {"name": "fixed", "alpha": 0.01}})
    assert run.controller == FixedConfig(alpha=0.01)
    assert _Run().controller == AERConfig()
    assert _Run.model_validate({"controller": "target"}).controller == TargetConfig()
    assert _Run.model_validate(run.model_dump()).controller == run.controller  # dump → load
    with pytest.raises(ValidationError) as info:
        _Run.model_validate({"controller": {"name": "aer", "alpha_0": 0.5}})
    assert format_validation_error(info.value, model=_Run) == [
        "controller.alpha_0: must be ≤ alpha_max = 0.05 (got 0.5)"
    ]
    with pytest.raises(ValidationError) as info:
        _Run.model_validate({"controller": {"name": "nope"}})
    (line,) = format_validation_error(info.value)
    assert line.startswith("controller.name: unknown controller 'nope' (available: aer, clip_higher")


def test_run_config_json_schema_is_the_discriminated_union() -> None:
    schema = _Run.model_json_schema()
    controller = schema["properties"]["controller"]
    assert controller["discriminator"]["propertyName"] == "name"
    assert set(controller["discriminator"]["mapping"]) >= {"aer", "clip_higher", "fixed", "target"}
