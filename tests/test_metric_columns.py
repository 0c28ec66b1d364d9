"""Each metrics.csv column means what docs/training.md says, checked one column at a time on short runs
of the tiny model: loss parts and clip fractions token-weighted over the step's global batch (not summed
over mini-batches), ``reward`` (shaped) apart from ``accuracy`` (verifier == 1), ``grad_norm`` measured
without clipping, and every controller metric (a plugin's included) as a ``controller/<key>`` column."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from trainer_helpers import read_metrics, tiny_config

from entropyctl import register_controller
from entropyctl.config import ControllerConfig
from entropyctl.controllers import registry
from entropyctl.controllers.fixed import FixedController
from entropyctl.trainer.module import RLVRModule
from entropyctl.trainer.run import run_training
from entropyctl.trainer.run_dir import CONTROLLER_PREFIX, metric_columns

#: one step, no held-out evaluation, no checkpoint: only metrics.csv matters here
ONE_STEP = ["trainer.steps=1", "eval.before=false", "eval.after=false", "trainer.save_last=false"]
LOSS_COLUMNS = ("loss", "pg_loss", "entropy_loss", "kl_loss")


def test_loss_columns_do_not_scale_with_the_number_of_mini_batches(tmp_path: Path) -> None:
    """The same first step (same prompts, rollouts and weights: a tiny lr changes nothing measurable before
    the last mini-batch) split into 1 or 3 mini-batches: the token-mean loss parts over the global batch
    are the same number; a sum of per-mini-batch means would be ~3x larger."""
    common = [*ONE_STEP, "optim.lr=1e-12", "algorithm.kl_coef=0.05", "algorithm.ppo_epochs=1"]
    run_training(tiny_config(*common, "algorithm.mini_batches=1"), tmp_path / "m1")
    run_training(tiny_config(*common, "algorithm.mini_batches=3"), tmp_path / "m3")
    (one,), (three,) = read_metrics(tmp_path / "m1"), read_metrics(tmp_path / "m3")
    assert one["tokens"] == three["tokens"] and one["entropy"] == pytest.approx(three["entropy"], rel=1e-5)
    assert abs(one["entropy_loss"]) > 1e-4  # α > 0 on the first step: the comparison is not 0 == 0
    for column in LOSS_COLUMNS:
        assert three[column] == pytest.approx(one[column], rel=1e-4, abs=1e-7), column


@pytest.fixture
def recorded_losses(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, float]]:
    """Every loss call of the trainer: its mini-batch's global token count N_m and its outputs."""
    calls: list[dict[str, float]] = []
    original = RLVRModule._loss

    def recording(self: RLVRModule, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        # N_m, the mini-batch's global token count: the loss call's one integer argument
        num_tokens = next(a for a in (*args, *kwargs.values()) if type(a) is int)
        calls.append(
            {
                "num_tokens": float(num_tokens),
                "clip_low_count": float(out.clip_frac_low) * num_tokens,
                "clip_high_count": float(out.clip_frac_high) * num_tokens,
                "loss": float(out.loss.detach()),
                "pg_loss": float(out.pg_loss),
            }
        )
        return out

    monkeypatch.setattr(RLVRModule, "_loss", recording)
    return calls


def test_clip_fractions_and_losses_are_token_weighted_over_epochs_and_mini_batches(
    tmp_path: Path, recorded_losses: list[dict[str, float]]
) -> None:
    """2 epochs x 3 mini-batches with narrow clip bounds and a large lr, so the second epoch clips (the
    overlong penalty gives the responses of a group different rewards, hence advantages ≠ 0):
    clip_frac = clipped tokens / (E x response tokens of the step), loss = Σ_e Σ_m N_m L_m / (E Σ_m N_m)."""
    config = tiny_config(
        *ONE_STEP,
        "optim.lr=0.05",
        "rollout.overlong=penalty",
        "rollout.overlong_buffer=5",
        "algorithm.ppo_epochs=2",
        "algorithm.mini_batches=3",
        "controller.name=fixed",
        "controller.alpha=0.01",
        "controller.clip_low=0.02",
        "controller.clip_high=0.02",
    )
    run_training(config, tmp_path)
    (row,) = read_metrics(tmp_path)
    assert len(recorded_losses) == 6
    total = sum(c["num_tokens"] for c in recorded_losses[:3])  # the first epoch's mini-batches
    assert total == row["tokens"]  # every response token once
    assert [c["num_tokens"] for c in recorded_losses[3:]] == [c["num_tokens"] for c in recorded_losses[:3]]
    clipped_low = sum(c["clip_low_count"] for c in recorded_losses)
    clipped_high = sum(c["clip_high_count"] for c in recorded_losses)
    assert clipped_low + clipped_high > 0  # the bounds bind: a mis-weighting would show
    assert row["clip_frac_low"] == pytest.approx(clipped_low / (2 * total), rel=1e-6)
    assert row["clip_frac_high"] == pytest.approx(clipped_high / (2 * total), rel=1e-6)
    assert 0.0 <= row["clip_frac_low"] + row["clip_frac_high"] <= 1.0
    for column in ("loss", "pg_loss"):
        expected = sum(c[column] * c["num_tokens"] for c in recorded_losses) / (2 * total)
        assert row[column] == pytest.approx(expected, rel=1e-6, abs=1e-9), column


def test_reward_is_the_shaped_reward_and_accuracy_the_verifier_share(tmp_path: Path) -> None:
    """With DAPO's overlong penalty over the whole length budget (L_cache = L_max − 1), every response of
    |y| tokens gets −(|y| − 1)/(L_max − 1): reward = accuracy − (mean |y| − 1)/(L_max − 1) exactly."""
    max_new = 6
    config = tiny_config(
        *ONE_STEP,
        f"rollout.max_new_tokens={max_new}",
        "rollout.overlong=penalty",
        f"rollout.overlong_buffer={max_new - 1}",
    )
    run_training(config, tmp_path)
    (row,) = read_metrics(tmp_path)
    penalty = (row["response_length"] - 1.0) / (max_new - 1)
    assert penalty > 0  # responses longer than one token: the two columns must differ
    assert 0.0 <= row["accuracy"] <= 1.0
    assert row["reward"] == pytest.approx(row["accuracy"] - penalty, rel=1e-6, abs=1e-9)
    assert row["reward"] < row["accuracy"]


def test_grad_norm_is_measured_when_gradients_are_not_clipped(tmp_path: Path) -> None:
    """The first step's gradient is the same with or without clipping: its norm (before clipping) too."""
    run_training(tiny_config(*ONE_STEP, "optim.grad_clip=null"), tmp_path / "free")
    run_training(tiny_config(*ONE_STEP, "optim.grad_clip=1e-3"), tmp_path / "clipped")
    (free,), (clipped,) = read_metrics(tmp_path / "free"), read_metrics(tmp_path / "clipped")
    assert free["grad_norm"] > 1e-3  # so the clipped run did clip
    assert free["grad_norm"] == pytest.approx(clipped["grad_norm"], rel=1e-5)


class GainConfig(ControllerConfig):
    name: Literal["gain_plugin"] = "gain_plugin"
    alpha: float = 0.002


class GainController(FixedController):
    """A plugin controller (test double) with a metric of its own."""

    config_class = GainConfig  # type: ignore[assignment]

    def _alpha(self) -> float:
        return float(self.config.alpha)  # type: ignore[attr-defined]

    def plan(self, outcome):  # type: ignore[no-untyped-def]
        return self.uniform_plan(outcome, self._alpha(), 0.2, 0.28)

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "plugin_gain": 10.0 * self.steps_observed}


@pytest.fixture
def plugin_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    registry._ensure_discovered()
    monkeypatch.setattr(registry, "_registry", dict(registry._registry))
    register_controller("gain_plugin")(GainController)
    yield


def test_every_controller_metric_is_a_namespaced_column(tmp_path: Path, plugin_registered: None) -> None:
    config = tiny_config("trainer.steps=2", "eval.before=false", "eval.after=false", "controller.name=aer")
    run_training(config, tmp_path / "aer")
    rows = read_metrics(tmp_path / "aer")
    header = list(rows[0])
    levels = config.data.levels or [1, 2, 3, 4, 5]
    keys = ["alpha", "target_entropy", "h0", "last_entropy", "readings_ignored", "steps_observed"]
    assert header[: len(metric_columns(levels))] == metric_columns(levels)  # the fixed columns come first
    for key in keys:
        assert CONTROLLER_PREFIX + key in header, key
    for row in rows:  # the namespaced copy and the historical column agree
        assert row["controller/alpha"] == row["alpha"]
        assert row["controller/last_entropy"] == pytest.approx(row["entropy"])
    assert [r["controller/steps_observed"] for r in rows] == [1.0, 2.0]

    plugin = tiny_config(
        "trainer.steps=2", "eval.before=false", "eval.after=false", "controller.name=gain_plugin"
    )
    run_training(plugin, tmp_path / "plugin")
    rows = read_metrics(tmp_path / "plugin")
    assert [r["controller/plugin_gain"] for r in rows] == [10.0, 20.0]
    assert all(r["alpha"] == 0.002 for r in rows)
