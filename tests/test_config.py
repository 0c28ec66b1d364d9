"""Controller configs: validation rules (one test per rule, each naming the field), YAML loading,
overrides and the run-config ``controller`` field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError

from entropyctl.config import (
    AbsoluteAnchor,
    AdditiveUpdate,
    AERConfig,
    ConfigError,
    ControllerField,
    FixedConfig,
    InitialAnchor,
    LogUpdate,
    NoUpdate,
    RelativeUpdate,
    TargetConfig,
    ThresholdAllocation,
    UniformAllocation,
    apply_overrides,
    format_validation_error,
    load_run_config,
    load_yaml,
    parse_controller_config,
    parse_run_config,
)


def error_of(config: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_controller_config(config)
    return str(info.value)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # coefficients ≥ 0; the relative rule's floor > 0 (log α must exist)
        ({"name": "fixed", "alpha": -0.1}, "controller.alpha: must be ≥ 0"),
        (
            {"name": "aer", "update": {"rule": "additive", "alpha_min": -1e-3}},
            "controller.update.alpha_min: must be ≥ 0",
        ),
        ({"name": "aer", "alpha_min": 0.0}, "controller.update.alpha_min: must be > 0 (got 0.0)"),
        (
            {"name": "target", "update": {"rule": "additive", "eta": -0.5}},
            "controller.update.eta: must be > 0",
        ),
        ({"name": "aer", "update": {"rule": "sign", "delta": -1.0}}, "controller.update.delta: must be > 0"),
        ({"name": "aer", "update": {"step": 0.0}}, "controller.update.step: must be > 0"),
        ({"name": "aer", "update": {"step": 1.5}}, "controller.update.step: must be ≤ 1"),
        ({"name": "aer", "update": {"smoothing": 1.0}}, "controller.update.smoothing: must be < 1"),
        # alpha_min ≤ alpha_0 ≤ alpha_max
        (
            {"name": "aer", "alpha_0": 0.5, "update": {"alpha_max": 0.1}},
            "controller.alpha_0: must be ≤ update.alpha_max = 0.1 (got 0.5)",
        ),
        (
            {"name": "aer", "alpha_0": 0.01, "update": {"alpha_min": 0.02}},
            "controller.alpha_0: must be ≥ update.alpha_min = 0.02",
        ),
        (
            {"name": "target", "update": {"rule": "sign", "alpha_min": 0.2, "alpha_max": 0.1}},
            "controller.update.alpha_min: must be ≤ alpha_max",
        ),
        # 0 < tau ≤ 1
        ({"name": "aer", "anchor": {"tau": 0.0}}, "controller.anchor.tau: must be > 0"),
        ({"name": "aer", "tau": 1.5}, "controller.anchor.tau: must be ≤ 1"),
        # 0 ≤ accuracy_threshold ≤ 1 (the first release's rho)
        ({"name": "aer", "rho": -0.1}, "controller.allocation.accuracy_threshold: must be ≥ 0"),
        (
            {"name": "aer", "allocation": {"accuracy_threshold": 1.1}},
            "controller.allocation.accuracy_threshold: must be ≤ 1",
        ),
        # clip bounds > 0
        ({"name": "clip_higher", "clip_high": 0.0}, "controller.clip_high: must be > 0"),
        ({"name": "fixed", "clip_low": -0.2}, "controller.clip_low: must be > 0"),
        # finite numbers only
        (
            {"name": "aer", "update": {"step": float("nan")}},
            "controller.update.step: must be a finite number",
        ),
        ({"name": "fixed", "alpha": float("inf")}, "controller.alpha: must be a finite number"),
        # anchor steps ≥ 1, absolute anchor needs a target
        ({"name": "aer", "anchor_steps": 0}, "controller.anchor.steps: must be ≥ 1"),
        (
            {"name": "target", "anchor": {"mode": "absolute"}},
            "controller.anchor.target_entropy: required field is missing",
        ),
        # choices and unknown fields
        (
            {"name": "aer", "update": "momentum"},
            "controller.update: must be one of 'relative', 'additive', 'sign', 'log', 'none' (got 'momentum')",
        ),
        ({"name": "aer", "update": {"rule": "momentum"}}, "controller.update: must be one of 'relative'"),
        ({"name": "aer", "allocation": "soft"}, "controller.allocation: must be one of 'threshold'"),
        ({"name": "aer", "tau ": 0.4}, "controller.tau : unknown field (valid fields: name, alpha_0"),
        # an option the chosen variant does not use is an error, in the nested and the flat form
        (
            {"name": "aer", "update": {"rule": "sign", "eta": 0.1}},
            "controller.update.eta: unknown field (valid fields: rule, alpha_min, alpha_max, apply, delta)",
        ),
        (
            {"name": "aer", "update": "sign", "eta": 0.1},
            "controller.eta: the update rule 'sign' does not use eta",
        ),
        (
            {"name": "aer", "update": {"rule": "additive", "delta": 0.1}},
            "controller.update.delta: unknown field",
        ),
        (
            {"name": "aer", "anchor": {"mode": "absolute", "target_entropy": 0.3, "tau": 0.3}},
            "controller.anchor.tau: unknown field",
        ),
        (
            {"name": "aer", "anchor": "absolute", "target_entropy": 0.3, "tau": 0.3},
            "controller.tau: the anchor mode 'absolute' does not use tau",
        ),
        (
            {"name": "aer", "target_entropy": 0.3},
            "controller.target_entropy: the anchor mode 'initial' does not use target_entropy",
        ),
        (
            {"name": "aer", "allocation": {"rule": "linear", "accuracy_threshold": 0.7}},
            "controller.allocation.accuracy_threshold: unknown field",
        ),
        (
            {"name": "aer", "allocation": "linear", "rho": 0.7},
            "controller.rho: the allocation rule 'linear' does not use rho",
        ),
        (
            {"name": "aer", "update": {"rule": "none", "alpha_max": 0.1}},
            "controller.update.alpha_max: unknown field",
        ),
        (
            {"name": "target", "update": {"rule": "none"}},
            "controller.update: must be one of 'relative', 'additive', 'sign', 'log'",
        ),
        ({"name": "aer", "dynamic": "maybe"}, "controller.dynamic: must be true or false"),
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
    message = error_of(
        {
            "name": "aer",
            "anchor": {"tau": 2.0},
            "allocation": {"accuracy_threshold": -1.0},
            "update": {"step": float("inf")},
        }
    )
    lines = [line.strip() for line in message.splitlines()]
    assert lines[0] == "invalid configuration:"
    assert {line.split(":")[0] for line in lines[1:]} == {
        "controller.anchor.tau",
        "controller.allocation.accuracy_threshold",
        "controller.update.step",
    }


def test_defaults_and_round_trip() -> None:
    aer = parse_controller_config({"name": "aer"})
    assert isinstance(aer, AERConfig)
    assert aer.update == RelativeUpdate(
        step=0.05, proportional=2.0, smoothing=0.8, alpha_min=1e-5, alpha_max=1.0
    )
    assert aer.anchor == InitialAnchor(tau=0.4, steps=1)
    assert aer.allocation == ThresholdAllocation(accuracy_threshold=0.5)
    assert parse_controller_config({"name": "aer", "update": "log"}).update == LogUpdate(eta=0.5)
    assert parse_controller_config({"name": "aer", "update": "additive"}).update == AdditiveUpdate(eta=0.002)
    assert parse_controller_config(aer.model_dump()) == aer
    assert parse_controller_config("target") == TargetConfig()
    # a nested part without its rule/mode is the default variant
    assert parse_controller_config({"name": "aer", "update": {"step": 0.3}}).update == RelativeUpdate(
        step=0.3
    )


def test_the_first_release_flat_form_reads_as_it_did() -> None:
    """Flat keys of the first release move into their part with their old meaning: with eta/delta or
    `update: <name>` the rule is the old default additive; `dynamic: false` and
    `difficulty_aware: false` drop the options they switched off (the first release ignored them)."""
    old = {
        "name": "aer",
        "alpha_0": 0.005,
        "alpha_min": 0.0,
        "alpha_max": 0.05,
        "eta": 0.05,
        "tau": 0.4,
        "rho": 0.5,
    }
    assert parse_controller_config(old) == AERConfig(
        alpha_0=0.005,
        update=AdditiveUpdate(eta=0.05, alpha_min=0.0, alpha_max=0.05),
        anchor=InitialAnchor(tau=0.4),
        allocation=ThresholdAllocation(accuracy_threshold=0.5),
    )
    switched = parse_controller_config({**old, "dynamic": False, "difficulty_aware": False, "rho": 0.3})
    assert switched.update == NoUpdate() and switched.allocation == UniformAllocation()
    absolute = parse_controller_config({**old, "anchor": "absolute", "target_entropy": 0.3})
    assert absolute.anchor == AbsoluteAnchor(target_entropy=0.3)  # tau 0.4 was the default: dropped
    # everything the first release wrote into a run directory's config.yaml (all fields, defaults
    # included, e.g. delta with the additive rule and target_entropy: null)
    full = {**old, "update": "additive", "delta": 0.0001, "anchor": "initial", "anchor_steps": 1,
            "target_entropy": None, "allocation": "threshold", "difficulty_aware": True, "dynamic": True,
            "clip_low": 0.2, "clip_high": 0.2}  # fmt: skip
    assert parse_controller_config(full) == parse_controller_config(old)
    # a flat key merges into a nested part (overrides on a nested config: --set controller.tau=0.3)
    merged = parse_controller_config({"name": "aer", "update": {"step": 0.2}, "tau": 0.3, "alpha_max": 0.5})
    assert merged.anchor.tau == 0.3 and merged.update == RelativeUpdate(step=0.2, alpha_max=0.5)


def test_an_override_wins_over_either_spelling_and_one_config_may_not_hold_both(tmp_path: Path) -> None:
    """A first-release base config (flat ``tau``, ``rho``) and a ``--set`` of the nested form: the
    override wins (it was dropped for the flat value, invalid values unchecked); and the other way round,
    in either order of the overrides; a config holding both spellings with two values is refused."""
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text("controller: {name: aer, tau: 0.5, rho: 0.5}\n")
    config = load_run_config(
        str(legacy), ["controller.anchor.tau=0.3", "controller.allocation.accuracy_threshold=0.9"]
    )
    assert config.controller.anchor.tau == 0.3 and config.controller.allocation.accuracy_threshold == 0.9
    with pytest.raises(ConfigError, match=r"--set controller.anchor.tau=-5: must be > 0"):
        load_run_config(str(legacy), ["controller.anchor.tau=-5"])
    assert (
        load_run_config(None, ["controller.tau=0.5", "controller.anchor.tau=0.3"]).controller.anchor.tau
        == 0.3
    )
    assert (
        load_run_config(None, ["controller.anchor.tau=0.3", "controller.tau=0.5"]).controller.anchor.tau
        == 0.5
    )
    whole = load_run_config(str(legacy), ["controller.anchor={mode: initial, tau: 0.2}"]).controller
    assert whole.anchor.tau == 0.2 and whole.allocation.accuracy_threshold == 0.5  # rho is another part's
    both = tmp_path / "both.yaml"
    both.write_text("controller: {name: aer, tau: 0.5, anchor: {tau: 0.3}}\n")
    with pytest.raises(ConfigError, match=r"tau and anchor.tau are both given \(0.5 and 0.3\): keep one"):
        load_run_config(str(both), [])
    both.write_text("controller: {name: aer, tau: 0.3, anchor: {tau: 0.3}}\n")  # the same value: one option
    assert load_run_config(str(both), []).controller.anchor.tau == 0.3
    # a part given by name keeps the flat keys that configure it; a part given as a mapping drops only
    # the flat keys of the options it names (a review of the first version: both dropped them all)
    flat = tmp_path / "flat.yaml"
    flat.write_text("controller: {name: aer, update: additive, eta: 0.1, alpha_max: 0.2, tau: 0.5}\n")
    update = load_run_config(str(flat), ["controller.update=log"]).controller.update
    assert update.rule == "log" and update.eta == 0.1 and update.alpha_max == 0.2
    assert load_run_config(str(flat), ["controller.anchor={mode: initial}"]).controller.anchor.tau == 0.5


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
        _Run.model_validate({"controller": {"name": "aer", "alpha_0": 1.5}})
    assert format_validation_error(info.value, model=_Run) == [
        "controller.alpha_0: must be ≤ update.alpha_max = 1.0 (got 1.5)"
    ]
    with pytest.raises(ValidationError) as info:
        _Run.model_validate({"controller": {"name": "nope"}})
    (line,) = format_validation_error(info.value)
    assert line.startswith(
        "controller.name: unknown controller 'nope' (available: aer, clip_cov, clip_higher"
    )


def test_run_config_json_schema_is_the_discriminated_union() -> None:
    schema = _Run.model_json_schema()
    controller = schema["properties"]["controller"]
    assert controller["discriminator"]["propertyName"] == "name"
    assert set(controller["discriminator"]["mapping"]) >= {"aer", "clip_higher", "fixed", "target"}


@pytest.mark.parametrize(
    ("config", "inert"),
    [
        ({"controller": {"name": "clip_higher"}}, True),  # the default one update per batch
        ({"controller": {"name": "aer", "clip_high": 0.28}}, True),
        ({"controller": {"name": "clip_higher"}, "algorithm": {"ppo_epochs": 2}}, False),
        ({"controller": {"name": "clip_higher"}, "algorithm": {"mini_batches": 2}}, False),
        ({"controller": {"name": "aer"}}, False),  # the symmetric default bounds: nothing asked of them
        ({"controller": {"name": "fixed", "alpha": 0.0}}, False),
    ],
)
def test_clip_bounds_with_one_update_per_batch_are_reported_inert(config: dict, inert: bool) -> None:
    """With ppo_epochs 1 and mini_batches 1 the trainer takes the ratio as 1 (no old log-probs are
    computed), so asked-for clip bounds cannot act: the config says so (the trainer prints it)."""
    lines = parse_run_config(config).inert_settings()
    assert bool(lines) is inert
    if inert:
        assert "no effect" in lines[0] and "algorithm.ppo_epochs" in lines[0]


def test_vllm_options_under_the_hf_engine_are_reported_inert() -> None:
    """rollout.options configure the vllm engine: a config may carry them for `--set rollout.engine=vllm`
    (configs/smollm2_cpu.yaml does), and with engine hf the run says they are not read."""
    lines = parse_run_config({"rollout": {"engine": "hf", "options": {"dtype": "float32"}}}).inert_settings()
    assert lines == [
        "rollout.options (dtype) configure the vllm engine and are not read with rollout.engine=hf"
    ]
    assert (
        parse_run_config({"rollout": {"engine": "vllm", "options": {"dtype": "float32"}}}).inert_settings()
        == []
    )


def test_an_ablation_section_under_train_is_reported_inert() -> None:
    lines = parse_run_config({"ablation": {"arms": ["aer", "fixed:alpha=0.01"]}}).inert_settings()
    assert len(lines) == 1 and "read by `entropyctl ablate`" in lines[0]


def test_ddp_spawn_is_refused_with_the_strategy_that_works() -> None:
    """Lightning's spawn launcher pickles the module (its reward worker and heartbeat hold thread locks, so
    the run failed at the spawn) and would hand back only its weights: refused in one line naming ddp."""
    with pytest.raises(ConfigError) as info:
        parse_run_config({"trainer": {"devices": 2, "strategy": "ddp_spawn"}})
    assert "trainer.strategy" in str(info.value) and "use ddp" in str(info.value)
    assert parse_run_config({"trainer": {"devices": 2, "strategy": "ddp"}}).trainer.strategy == "ddp"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["controller.update.rule=additive", "controller.update.eta=0"], "controller.update.eta"),
        (["controller.update.rule=log", "controller.update.eta=0"], "controller.update.eta"),
        (["controller.update.rule=sign", "controller.update.delta=0"], "controller.update.delta"),
        (
            ["controller.name=clip_cov", "controller.cov_lower=5", "controller.cov_upper=1"],
            r"cov_upper=1: the band \[cov_lower, cov_upper\] holds no covariance",
        ),
    ],
)
def test_a_controller_setting_that_would_do_nothing_is_refused(overrides: list[str], message: str) -> None:
    # a step of 0 never moves α (a fixed α is update: none); an empty Clip-Cov band detaches no token
    with pytest.raises(ConfigError, match=message):
        from entropyctl.config import load_run_config

        load_run_config(None, overrides)
