"""The adaptive β_r of the KL in the reward (algorithm.kl_reward_target; Ziegler et al. 2019, as verl's
kl_ctrl.type adaptive runs it): the rule, the config's refusals, a real run's β_r column following the
rule from its own logged readings, and a resumed run's β_r continuing where it was."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_resume import _KillAfter, _Killed
from trainer_helpers import read_metrics, tiny_config

from entropyctl.trainer.phases import adapted_kl_coef
from entropyctl.trainer.run import run_training
from entropyctl.validation import ConfigError


def test_the_rule_moves_beta_by_the_clipped_relative_error() -> None:
    # within the clip: 1 + (kl/target − 1) · N / horizon
    assert adapted_kl_coef(0.1, 0.11, 0.1, 100, 1000) == pytest.approx(0.1 * (1 + 0.1 * 0.1))
    assert adapted_kl_coef(0.1, 0.09, 0.1, 100, 1000) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    # the error is clipped to ±0.2: a KL far above or at 0 moves β_r by 20 % · N / horizon at most
    assert adapted_kl_coef(0.1, 50.0, 0.1, 100, 1000) == pytest.approx(0.1 * 1.02)
    assert adapted_kl_coef(0.1, 0.0, 0.1, 100, 1000) == pytest.approx(0.1 * 0.98)
    assert adapted_kl_coef(0.1, 0.1, 0.1, 100, 1000) == 0.1  # on target: unchanged
    assert adapted_kl_coef(0.1, math.nan, 0.1, 100, 1000) == 0.1  # no reading: unchanged


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.kl_reward_target=0.1"], "from 0 it stays 0"),
        (
            [
                "algorithm.kl_reward_coef=0.01",
                "algorithm.kl_reward_target=0.1",
                "algorithm.kl_reward_horizon=4",
            ],
            "kl_reward_horizon=4: must exceed",
        ),
        (["algorithm.kl_reward_coef=0.01", "algorithm.kl_reward_target=0"], "kl_reward_target"),
    ],
    ids=["start-at-0", "horizon-too-short", "target-0"],
)
def test_settings_that_cannot_work_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(*overrides)
    assert message in str(info.value)


def _check_rule(rows: list[dict[str, float]], target: float, responses: int, horizon: int) -> None:
    for before, after in zip(rows, rows[1:], strict=False):
        expected = adapted_kl_coef(
            before["kl_reward_coef"], before["kl_reward_token_mean"], target, responses, horizon
        )
        assert after["kl_reward_coef"] == pytest.approx(expected, rel=1e-12)


def test_a_run_moves_beta_by_its_own_readings_and_a_resume_continues_it(tmp_path: Path) -> None:
    """Step 1's policy is the reference (KL 0: β_r falls by the clip's 20 % · N / horizon), later steps
    read a KL far above the tiny target (β_r rises); each row's reward is the verifier's less that row's
    β_r · kl_reward; a run killed after step 3 and resumed from its step-2 checkpoint logs the same β_r."""
    target, horizon = 1e-6, 48
    common = ["trainer.steps=4", "eval.before=false", "eval.after=false", "trainer.checkpoint_every=1"]
    common += ["algorithm.ppo_epochs=1", "optim.lr=0.05", "reward.name=operator:lt"]
    common += ["algorithm.kl_reward_coef=0.5", f"algorithm.kl_reward_target={target}"]
    config = tiny_config(*common, f"algorithm.kl_reward_horizon={horizon}")
    responses = config.rollout.prompts_per_step * config.rollout.group_size
    run_training(config, tmp_path / "full")
    rows = read_metrics(tmp_path / "full")
    assert rows[0]["kl_reward_coef"] == 0.5 and rows[0]["kl_reward_token_mean"] == 0.0
    assert rows[1]["kl_reward_coef"] == pytest.approx(0.5 * (1 - 0.2 * responses / horizon))
    assert all(r["kl_reward_token_mean"] > target for r in rows[1:])
    assert rows[3]["kl_reward_coef"] > rows[2]["kl_reward_coef"] > rows[1]["kl_reward_coef"]
    _check_rule(rows, target, responses, horizon)
    for row in rows:
        assert row["reward"] == pytest.approx(
            row["accuracy"] - row["kl_reward_coef"] * row["kl_reward"], rel=1e-6, abs=1e-9
        )
    with pytest.raises(_Killed):
        run_training(config, tmp_path / "cut", callbacks=[_KillAfter(3)])
    run_training(config, tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoints" / "step-000002.ckpt"))
    resumed = read_metrics(tmp_path / "cut")
    assert [r["kl_reward_coef"] for r in resumed] == [r["kl_reward_coef"] for r in rows]


def test_a_fixed_beta_is_logged_as_it_is_and_no_kl_in_the_reward_as_nan(tmp_path: Path) -> None:
    quick = ["trainer.steps=2", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
    run_training(tiny_config(*quick, "algorithm.kl_reward_coef=0.25"), tmp_path / "fixed")
    assert [r["kl_reward_coef"] for r in read_metrics(tmp_path / "fixed")] == [0.25, 0.25]
    run_training(tiny_config(*quick), tmp_path / "off")
    off = read_metrics(tmp_path / "off")
    assert all(math.isnan(r["kl_reward_coef"]) and math.isnan(r["kl_reward_token_mean"]) for r in off)
