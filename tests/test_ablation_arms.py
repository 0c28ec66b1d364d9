"""Arm parsing, config resolution and run planning of `entropyctl ablate` (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from entropyctl.config import ABSENT_MEANS, AERConfig, ConfigError, TargetConfig
from entropyctl.experiments.ablate import (
    Arm,
    canonical_config,
    is_finished,
    parse_arm,
    parse_arms,
    plan_runs,
    resolve_arm_config,
)

BASE = {
    "seed": 123,
    "controller": {"name": "aer", "tau": 0.5, "eta": 0.02},
    "trainer": {"steps": 10},
}


def test_parse_arm_strings() -> None:
    arm = parse_arm("fixed:alpha=0.01")
    assert arm.controller == "fixed" and arm.overrides == {"alpha": 0.01} and arm.label == "fixed:alpha=0.01"
    assert arm.slug == "fixed_alpha=0.01"
    arm = parse_arm("aer:difficulty_aware=false,tau=2e-1,trainer.steps=7")
    assert arm.overrides == {"difficulty_aware": False, "tau": 0.2, "trainer.steps": 7}
    assert parse_arm("clip_higher") == Arm("clip_higher", {}, "clip_higher")
    assert parse_arm("aer:target_entropy=[1, 2]").overrides == {"target_entropy": [1, 2]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected CONTROLLER"),
        ("fixed:alpha", "must be key=value"),
        ("aer:tau=0.1,tau=0.2", "given twice"),
    ],
)
def test_parse_arm_errors_name_the_arm(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_arm(spec)


def test_arms_from_yaml_file_and_mappings(tmp_path: Path) -> None:
    path = tmp_path / "arms.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "arms": [
                    "clip_higher",
                    {"name": "aer", "tau": 0.2, "label": "aer tau 0.2", "set": ["trainer.steps=3"]},
                ]
            }
        )
    )
    arms = parse_arms([str(path), "fixed:alpha=0"])
    assert [a.label for a in arms] == ["clip_higher", "aer tau 0.2", "fixed:alpha=0"]
    assert arms[1].overrides == {"tau": 0.2, "trainer.steps": 3} and arms[1].slug == "aer_tau_0.2"
    with pytest.raises(ConfigError, match="same directory"):
        parse_arms(["aer", "aer"])


def test_arm_keys_reach_the_controller_parts_and_run_config_sections() -> None:
    nested = {**BASE, "controller": {"name": "aer"}}
    arm = resolve_arm_config(nested, parse_arm("aer:update.step=0.3,anchor.tau=0.2,optim.lr=0.001"), seed=0)
    assert arm["controller"]["update"]["rule"] == "relative" and arm["controller"]["update"]["step"] == 0.3
    assert arm["controller"]["anchor"]["tau"] == 0.2 and arm["optim"] == {"lr": 0.001}
    # the base's flat eta is the additive rule: a relative-rule option on top of it is a conflict
    with pytest.raises(ConfigError, match="the update rule 'relative' does not use eta"):
        resolve_arm_config(BASE, parse_arm("aer:update.step=0.3"), seed=0)


def test_same_controller_keeps_base_fields_other_controller_starts_from_defaults() -> None:
    aer = resolve_arm_config(BASE, parse_arm("aer:tau=0.2"), seed=1)
    # base eta kept (the flat form: the additive rule)
    assert aer["controller"]["anchor"]["tau"] == 0.2 and aer["controller"]["update"]["eta"] == 0.02
    assert aer["seed"] == 1 and aer["trainer"] == {"steps": 10}
    target = resolve_arm_config(BASE, parse_arm("target"), seed=1)
    assert target["controller"]["name"] == "target"
    defaults = TargetConfig().model_dump(mode="json")
    assert target["controller"] == defaults  # target's own defaults, not the base aer's eta/tau
    fixed = resolve_arm_config(BASE, parse_arm("fixed:alpha=0.05,trainer.steps=3"), seed=2)
    assert fixed["controller"]["alpha"] == 0.05 and fixed["trainer"]["steps"] == 3
    assert BASE["controller"] == {"name": "aer", "tau": 0.5, "eta": 0.02}  # base untouched


def test_bad_arm_field_is_reported_with_the_arm() -> None:
    with pytest.raises(ConfigError, match=r"arm 'fixed:alpah=0.1': controller.alpah: unknown field"):
        resolve_arm_config(BASE, parse_arm("fixed:alpah=0.1"), seed=0)
    with pytest.raises(ConfigError, match=r"arm 'aer:trainer.stepz=3': trainer.stepz: unknown field"):
        resolve_arm_config(BASE, parse_arm("aer:trainer.stepz=3"), seed=0)
    with pytest.raises(ConfigError, match=r"unknown controller 'nope'"):
        resolve_arm_config(BASE, parse_arm("nope"), seed=0)


def test_plan_runs_same_seeds_across_arms(tmp_path: Path) -> None:
    arms = parse_arms(["fixed:alpha=0", "aer"])
    specs = plan_runs(BASE, arms, [0, 1, 2], tmp_path)
    assert len(specs) == 6
    for seed in (0, 1, 2):
        runs = [s for s in specs if s.seed == seed]
        assert {s.arm.label for s in runs} == {"fixed:alpha=0", "aer"}
        assert all(s.config["seed"] == seed for s in runs)
    assert specs[0].run_dir == tmp_path / "fixed_alpha=0" / "seed0"
    # Everything but the controller is identical across arms at one seed.
    a, b = (dict(s.config) for s in specs[:2])
    a.pop("controller"), b.pop("controller")
    assert a == b


def test_is_finished(tmp_path: Path) -> None:
    assert not is_finished(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "running"}))
    assert not is_finished(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished"}))
    assert is_finished(tmp_path)
    (tmp_path / "summary.json").write_text("{broken")
    assert not is_finished(tmp_path)


def test_shipped_ablation_config_plans_every_arm(tmp_path: Path) -> None:
    """configs/ablation.yaml (the committed study) resolves and validates every arm × seed."""
    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "configs" / "ablation.yaml").read_text())
    section = base["ablation"]
    arms = parse_arms(section["arms"], where="ablation.arms")
    specs = plan_runs(base, arms, list(range(section["seeds"])), tmp_path)
    assert len(specs) == len(arms) * section["seeds"] and section["seeds"] >= 3
    by_label = {s.arm.label: s.config for s in specs if s.seed == 0}
    assert by_label["fixed:alpha=0"]["controller"]["alpha"] == 0.0
    absolute = by_label["aer:anchor=absolute,target_entropy=0.3"]["controller"]
    assert absolute["anchor"] == {"mode": "absolute", "target_entropy": 0.3}
    # Every arm shares everything but the controller: same data, optimiser and trainer sections.
    shared = {k: v for k, v in by_label["aer"].items() if k != "controller"}
    for config in by_label.values():
        assert {k: v for k, v in config.items() if k != "controller"} == shared


def test_shipped_collapse_config_is_the_study_config_on_level_2_for_longer(tmp_path: Path) -> None:
    """configs/ablation_collapse.yaml differs from configs/ablation.yaml only where its header says:
    level 2 only, 3000 steps, pass@k every 500 steps, checkpoints every 500 steps, three arms."""
    root = Path(__file__).resolve().parents[1]
    study = yaml.safe_load((root / "configs" / "ablation.yaml").read_text())
    collapse = yaml.safe_load((root / "configs" / "ablation_collapse.yaml").read_text())
    section = collapse.pop("ablation")
    study.pop("ablation")
    assert collapse["data"]["levels"] == [2] and collapse["trainer"]["steps"] == 3000
    changed = {
        "data": {"levels": [2]},
        "trainer": {"steps": 3000, "checkpoint_every": 500},
        "eval": {"every": 500},
    }
    for name, fields in changed.items():
        study[name].update(fields)
    assert collapse == study
    arms = parse_arms(section["arms"], where="ablation.arms")
    assert [a.label for a in arms] == ["fixed:alpha=0", "aer", "aer:alpha_max=0.2"] and section["seeds"] >= 3
    specs = plan_runs(collapse, arms, list(range(section["seeds"])), tmp_path)
    assert len(specs) == 3 * section["seeds"]
    capped = [s.config["controller"] for s in specs if s.arm.label == "aer:alpha_max=0.2"][0]
    assert capped["update"] == {
        "rule": "additive",
        "alpha_min": 0.0,
        "alpha_max": 0.2,
        "apply": "always",
        "eta": 0.05,
    }
    assert capped["anchor"]["tau"] == 0.4


def test_shipped_collapse_v2_config_is_the_collapse_config_with_aer_at_its_defaults(tmp_path: Path) -> None:
    """configs/ablation_collapse_v2.yaml = configs/ablation_collapse.yaml with `controller: {name: aer}`
    (every setting at its default) and arms no bonus and aer first."""
    root = Path(__file__).resolve().parents[1]
    old = yaml.safe_load((root / "configs" / "ablation_collapse.yaml").read_text())
    new = yaml.safe_load((root / "configs" / "ablation_collapse_v2.yaml").read_text())
    section = new.pop("ablation")
    old.pop("ablation")
    assert new.pop("controller") == {"name": "aer"}
    old.pop("controller")
    assert new == old
    arms = parse_arms(section["arms"], where="ablation.arms")
    assert [a.label for a in arms][:2] == ["fixed:alpha=0", "aer"] and section["seeds"] >= 3
    specs = plan_runs({**new, "controller": {"name": "aer"}}, arms, [0], tmp_path)
    assert specs[1].config["controller"] == AERConfig().model_dump(mode="json")


def test_shipped_robustness_config_sweeps_fixed_alpha_and_aer_knobs(tmp_path: Path) -> None:
    """configs/robustness.yaml: fixed α over ≥ 5 non-zero values and AER's step over ≥ 10× and τ over
    3 values, 3 seeds, on the 12-arm study's task (configs/ablation.yaml but for the controller, whose
    arms start from the library defaults)."""
    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "configs" / "robustness.yaml").read_text())
    study = yaml.safe_load((root / "configs" / "ablation.yaml").read_text())
    section = base.pop("ablation")
    study.pop("ablation")
    assert base.pop("controller") == {"name": "aer"}
    study.pop("controller")
    assert base["trainer"].pop("checkpoint_every") == 200  # resumable; the study keeps none
    study["trainer"].pop("checkpoint_every")
    assert base == study
    specs = plan_runs({**base, "controller": {"name": "aer"}}, parse_arms(section["arms"]), [0], tmp_path)
    controllers = [s.config["controller"] for s in specs]
    alphas = {c["alpha"] for c in controllers if c["name"] == "fixed"} - {0}
    steps = {c["update"]["step"] for c in controllers if c["name"] == "aer"}
    taus = {c["anchor"]["tau"] for c in controllers if c["name"] == "aer"}
    assert len(alphas) >= 5 and max(steps) / min(steps) >= 10 and len(taus) >= 3 and section["seeds"] >= 3


def test_an_arm_that_changes_the_update_rule_drops_the_configs_fields_of_the_old_one(tmp_path: Path) -> None:
    """A config that writes the relative rule out (configs/default.yaml's form) and an arm with
    `update.rule=none` (a constant α under AER's allocation): the arm starts that rule from its defaults;
    an arm that keeps the rule keeps the config's fields."""
    written = {"rule": "relative", "step": 0.05, "proportional": 2.0, "smoothing": 0.8}
    base = {**BASE, "controller": {"name": "aer", "update": written}}
    arms = parse_arms(["aer:update.rule=none,alpha_0=1e-4", "aer:update.step=0.15"])
    constant, faster = (spec.config["controller"] for spec in plan_runs(base, arms, [0], tmp_path))
    assert constant["update"] == {"rule": "none"} and constant["alpha_0"] == 1e-4
    assert faster["update"]["step"] == 0.15 and faster["update"]["smoothing"] == 0.8


def test_a_config_that_writes_out_an_absent_fields_old_value_matches_the_runs_launched_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """canonical_config compares what two configs say: a field left out of a relative update reads as
    ABSENT_MEANS says (the value runs had before the field existed), not as today's default, so a
    config that later writes that value out still matches the runs launched without it. Here the
    table's entry for ``linear`` is set to 0.05 (as it would read had the field's old value been
    0.05): the config lacking it then matches the one writing 0.05, not today's default 0."""
    monkeypatch.setitem(ABSENT_MEANS, "controller.update.linear", 0.05)
    lacking = {"controller": {"name": "aer", "update": {"rule": "relative", "step": 0.05}}}
    old = {"controller": {"name": "aer", "update": {"rule": "relative", "step": 0.05, "linear": 0.05}}}
    today = {"controller": {"name": "aer", "update": {"rule": "relative", "step": 0.05, "linear": 0.0}}}
    assert canonical_config(lacking) == canonical_config(old) != canonical_config(today)


def test_a_bare_key_the_controller_has_is_the_controllers() -> None:
    """clip_cov has a `seed` of its own (the token draw): `clip_cov:seed=7` sets it, where it was sent to
    the run's seed (which the ablation then set to the run's seed: two arms, one config)."""
    configs = [resolve_arm_config(BASE, parse_arm(f"clip_cov:seed={s}"), 3) for s in (7, 8)]
    assert [c["seed"] for c in configs] == [3, 3]
    assert [c["controller"]["seed"] for c in configs] == [7, 8]
    assert resolve_arm_config(BASE, parse_arm("aer:trainer.steps=5"), 3)["trainer"]["steps"] == 5
